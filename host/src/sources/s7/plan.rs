//! Read planning: the tags of a poll group coalesced into byte ranges per area (adjacent, or
//! across gaps up to `max_gap` bytes), then the ranges cut into chunks and packed into as few
//! multi-item read requests as the negotiated PDU size and item limit allow.

use super::address::Area;
use super::proto::{
    request_size, response_item_size, ItemSpec, RESPONSE_BASE, RESPONSE_ITEM_HEADER,
};

/// One tag to read: its index in the source's tag list, area, first byte and size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub tag: usize,
    pub area: Area,
    pub start: u32,
    pub size: u32,
}

/// A contiguous byte range of one area and the tags in it (tag index, offset in the range).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub area: Area,
    pub start: u32,
    pub len: u32,
    pub tags: Vec<(usize, u32)>,
}

impl Range {
    /// `DB10 bytes 0..=23`, for logs.
    pub fn describe(&self) -> String {
        format!(
            "{} bytes {}..={}",
            self.area,
            self.start,
            self.start + self.len - 1
        )
    }
}

/// Coalesces `wanted` into ranges.
pub fn ranges(mut wanted: Vec<Wanted>, max_gap: u32) -> Vec<Range> {
    wanted.sort_by_key(|w| (w.area, w.start, w.tag));
    let mut out: Vec<Range> = Vec::new();
    for w in wanted {
        let end = w.start + w.size;
        if let Some(r) = out.last_mut() {
            let r_end = r.start + r.len;
            if r.area == w.area && w.start <= r_end + max_gap {
                r.len = end.max(r_end) - r.start;
                r.tags.push((w.tag, w.start - r.start));
                continue;
            }
        }
        out.push(Range {
            area: w.area,
            start: w.start,
            len: w.size,
            tags: vec![(w.tag, 0)],
        });
    }
    out
}

/// A piece of a range read as one item: bytes `offset..offset + len` of range `range`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub range: usize,
    pub offset: u32,
    pub len: u16,
}

/// The largest item a response of `pdu` bytes holds on its own (kept even).
pub fn max_item_bytes(pdu: u16) -> u32 {
    ((pdu as usize).saturating_sub(RESPONSE_BASE + RESPONSE_ITEM_HEADER) & !1) as u32
}

/// The chunks of `ranges`, packed into requests that fit `pdu` both ways and hold at most
/// `max_items` items.
pub fn pack(ranges: &[Range], pdu: u16, max_items: usize) -> Vec<Vec<Chunk>> {
    let pdu = pdu as usize;
    let cap = max_item_bytes(pdu as u16).max(2);
    let mut requests: Vec<Vec<Chunk>> = Vec::new();
    let mut response = RESPONSE_BASE;
    for (i, r) in ranges.iter().enumerate() {
        let mut offset = 0;
        while offset < r.len {
            let len = (r.len - offset).min(cap);
            let chunk = Chunk {
                range: i,
                offset,
                len: len as u16,
            };
            let item = response_item_size(len as usize);
            let fits = requests.last().is_some_and(|q| {
                q.len() < max_items && request_size(q.len() + 1) <= pdu && response + item <= pdu
            });
            if fits {
                requests.last_mut().expect("checked").push(chunk);
                response += item;
            } else {
                requests.push(vec![chunk]);
                response = RESPONSE_BASE + item;
            }
            offset += len;
        }
    }
    requests
}

/// The request items of `chunks`.
pub fn items(ranges: &[Range], chunks: &[Chunk]) -> Vec<ItemSpec> {
    chunks
        .iter()
        .map(|c| {
            let r = &ranges[c.range];
            ItemSpec {
                area: r.area.code(),
                db: r.area.db(),
                start: r.start + c.offset,
                len: c.len,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(tag: usize, area: Area, start: u32, size: u32) -> Wanted {
        Wanted {
            tag,
            area,
            start,
            size,
        }
    }

    #[test]
    fn neighbours_join_per_area_and_gaps_split() {
        let r = ranges(
            vec![
                w(0, Area::Db(10), 4, 4),
                w(1, Area::Db(10), 0, 4),
                w(2, Area::Db(10), 8, 2),
                w(3, Area::Db(10), 2, 1), // inside an earlier tag (a bit of a word)
                w(4, Area::Db(10), 40, 2),
                w(5, Area::Db(11), 0, 2),
                w(6, Area::Markers, 20, 2),
            ],
            4,
        );
        let shape: Vec<_> = r.iter().map(|r| (r.area, r.start, r.len)).collect();
        assert_eq!(
            shape,
            vec![
                (Area::Markers, 20, 2),
                (Area::Db(10), 0, 10),
                (Area::Db(10), 40, 2),
                (Area::Db(11), 0, 2),
            ]
        );
        assert_eq!(r[1].tags, vec![(1, 0), (3, 2), (0, 4), (2, 8)]);
        // With a larger gap allowance DB10's two ranges become one.
        assert_eq!(
            ranges(
                vec![w(0, Area::Db(10), 0, 4), w(1, Area::Db(10), 40, 2)],
                36
            )
            .len(),
            1
        );
        assert_eq!(
            ranges(
                vec![w(0, Area::Db(10), 0, 4), w(1, Area::Db(10), 40, 2)],
                35
            )
            .len(),
            2
        );
    }

    #[test]
    fn requests_fit_the_pdu_and_the_item_limit() {
        // 2000 REALs back to back in one DB: 8000 bytes.
        let wanted = (0..2000)
            .map(|i| w(i, Area::Db(1), i as u32 * 4, 4))
            .collect();
        let r = ranges(wanted, 0);
        assert_eq!(r.len(), 1);
        let q = pack(&r, 480, 20);
        // Each chunk fills a 480-byte response: 480 - 14 - 4 = 462 bytes.
        assert_eq!(max_item_bytes(480), 462);
        assert_eq!(q.len(), 8000usize.div_ceil(462));
        let total: u32 = q.iter().flatten().map(|c| c.len as u32).sum();
        assert_eq!(total, 8000);
        // 300 scattered INTs in 300 DBs: 20 items per request at most; sizes respected.
        let scattered: Vec<Wanted> = (0..300)
            .map(|i| w(i, Area::Db(i as u16 + 1), 0, 2))
            .collect();
        let r = ranges(scattered, 0);
        for (pdu, max) in [(480u16, 20usize), (240, 20), (960, 40)] {
            let q = pack(&r, pdu, max);
            for req in &q {
                assert!(req.len() <= max);
                assert!(request_size(req.len()) <= pdu as usize);
                let resp: usize = RESPONSE_BASE
                    + req
                        .iter()
                        .map(|c| response_item_size(c.len as usize))
                        .sum::<usize>();
                assert!(resp <= pdu as usize, "{resp} > {pdu}");
            }
            let items: usize = q.iter().map(|r| r.len()).sum();
            assert_eq!(items, 300);
            // 240 bytes hold (240 - 12) / 12 = 19 request items.
            let per = if pdu == 240 { 19 } else { max };
            assert_eq!(q.len(), 300usize.div_ceil(per), "pdu {pdu}");
        }
    }

    #[test]
    fn items_address_the_chunks() {
        let r = ranges(vec![w(0, Area::Db(7), 100, 600)], 0);
        let q = pack(&r, 240, 20);
        let it = items(&r, &q[0]);
        assert_eq!(it[0].start, 100);
        assert_eq!(it[0].db, 7);
        assert_eq!(it[0].area, 0x84);
        let all: Vec<ItemSpec> = q.iter().flat_map(|c| items(&r, c)).collect();
        assert_eq!(all.iter().map(|i| i.len as u32).sum::<u32>(), 600);
        assert_eq!(all[1].start, 100 + max_item_bytes(240));
    }
}
