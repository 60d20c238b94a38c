//! Read planning: the tags of one poll group, coalesced per table into as few reads as the
//! protocol allows (adjacent, or across gaps up to `max_gap`; at most 125 registers or 2000
//! bits per read).

use super::config::Table;

/// One tag to read: its index in the device's tag list, table, first address and span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub tag: usize,
    pub table: Table,
    pub address: u16,
    pub span: u16,
}

/// One read request and the tags it serves (tag index, offset of the tag in the block).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadBlock {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    pub tags: Vec<(usize, u16)>,
}

impl ReadBlock {
    /// `holding 100..=109`, for logs.
    pub fn describe(&self) -> String {
        format!(
            "{} {}..={}",
            self.table.as_str(),
            self.start,
            self.start as u32 + self.count as u32 - 1
        )
    }
}

/// Coalesces `wanted` into read blocks; `max_registers` and `max_bits` cap a block's size.
pub fn plan(
    mut wanted: Vec<Wanted>,
    max_registers: u16,
    max_bits: u16,
    max_gap: u16,
) -> Vec<ReadBlock> {
    wanted.sort_by_key(|w| (w.table, w.address, w.tag));
    let mut blocks: Vec<ReadBlock> = Vec::new();
    for w in wanted {
        let limit = if w.table.is_bits() {
            max_bits
        } else {
            max_registers
        } as u32;
        let end = w.address as u32 + w.span as u32;
        if let Some(b) = blocks.last_mut() {
            let b_end = b.start as u32 + b.count as u32;
            let joins = b.table == w.table
                && (w.address as u32) <= b_end + max_gap as u32
                && end.max(b_end) - b.start as u32 <= limit;
            if joins {
                b.count = (end.max(b_end) - b.start as u32) as u16;
                b.tags.push((w.tag, w.address - b.start));
                continue;
            }
        }
        blocks.push(ReadBlock {
            table: w.table,
            start: w.address,
            count: w.span,
            tags: vec![(w.tag, 0)],
        });
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(tag: usize, table: Table, address: u16, span: u16) -> Wanted {
        Wanted {
            tag,
            table,
            address,
            span,
        }
    }

    #[test]
    fn adjacent_registers_join_and_gaps_split() {
        let blocks = plan(
            vec![
                w(0, Table::Holding, 0, 2),
                w(1, Table::Holding, 2, 4),
                w(2, Table::Holding, 10, 1),
                w(3, Table::Input, 6, 1),
                w(4, Table::Coil, 0, 1),
                w(5, Table::Coil, 1, 1),
            ],
            125,
            2000,
            0,
        );
        let shape: Vec<_> = blocks.iter().map(|b| (b.table, b.start, b.count)).collect();
        assert_eq!(
            shape,
            vec![
                (Table::Holding, 0, 6),
                (Table::Holding, 10, 1),
                (Table::Input, 6, 1),
                (Table::Coil, 0, 2)
            ]
        );
        assert_eq!(blocks[0].tags, vec![(0, 0), (1, 2)]);
        // With a gap allowance the two holding ranges become one read.
        let joined = plan(
            vec![w(0, Table::Holding, 0, 6), w(1, Table::Holding, 10, 1)],
            125,
            2000,
            4,
        );
        assert_eq!(joined.len(), 1);
        assert_eq!((joined[0].count, joined[0].tags[1]), (11, (1, 10)));
    }

    #[test]
    fn blocks_never_exceed_the_protocol_limit() {
        // 100 f32 tags back to back: 200 registers → 125 + 75, a tag never split.
        let wanted = (0..100)
            .map(|i| w(i, Table::Holding, i as u16 * 2, 2))
            .collect();
        let blocks = plan(wanted, 125, 2000, 0);
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            (blocks[0].count, blocks[1].start, blocks[1].count),
            (124, 124, 76)
        );
        // Bits of one register share it.
        let bits = plan(
            vec![w(0, Table::Holding, 5, 1), w(1, Table::Holding, 5, 1)],
            125,
            2000,
            0,
        );
        assert_eq!(bits.len(), 1);
        assert_eq!(bits[0].tags, vec![(0, 0), (1, 0)]);
    }
}
