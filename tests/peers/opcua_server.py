"""An independent OPC UA server for Ferrule's interop tests (Python asyncua).

Usage: opcua_server.py PORT [--shift] [--pki DIR] [--many N] [--writable]

Namespace `urn:ferrule:test` holds one variable per node id form and data type (see NODES);
`Counter` counts up by one every 100 ms; `Sessions` is the number of sessions created since
the server started (a client that reconnects shows as more than one).
`--many N` adds N Double variables `Many.<k>` (k = 0..N-1, N <= 10000) whose value is
k + 10000 * g: g is a generation counted up every second from 0, and all of them carry the
same source timestamp per generation. `--shift` registers another namespace first, so the
test namespace gets a different index (as after a server restart with a changed config).
`--pki DIR` adds Basic256Sha256 (Sign, SignAndEncrypt) with a self-signed certificate for
127.0.0.1 in DIR, and a user `operator` / `secret`.
`--writable` lets clients write the values of the NODES variables.
"""

import asyncio
import logging
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

from asyncua import Server, ua
from asyncua.server.internal_session import InternalSession

URI = "urn:ferrule:test"
GUID = uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63")
# (identifier, variant type, value)
NODES = [
    ("Line1.Press1.Bar", ua.VariantType.Double, 5.5),
    (1001, ua.VariantType.Int32, -42),
    (GUID, ua.VariantType.Float, 2.5),
    (b"opaque-id", ua.VariantType.UInt64, 2**60 + 3),
    ("Line1.Name", ua.VariantType.String, "Press 1"),
    ("Line1.Running", ua.VariantType.Boolean, True),
    ("Line1.Int16", ua.VariantType.Int16, -300),
    ("Line1.Byte", ua.VariantType.Byte, 200),
    ("Line1.UInt32", ua.VariantType.UInt32, 4000000000),
    ("Line1.Int64", ua.VariantType.Int64, -(2**62)),
]


class Users:
    def get_user(self, iserver, username=None, password=None, certificate=None):
        from asyncua.crypto.permission_rules import User, UserRole

        if username is None:
            return User(role=UserRole.User)
        if username == "operator" and password == "secret":
            return User(role=UserRole.User)
        return None


def count_sessions(server, node):
    """Counts every CreateSession the server answers in `node`, before it answers."""
    create = InternalSession.create_session
    sessions = 0

    async def counted(self, *args, **kwargs):
        nonlocal sessions
        sessions += 1
        await server.write_attribute_value(
            node.nodeid, ua.DataValue(ua.Variant(float(sessions), ua.VariantType.Double)))
        return await create(self, *args, **kwargs)

    InternalSession.create_session = counted


async def write_generation(server, many, g):
    now = datetime.now(timezone.utc)
    for k, node in enumerate(many):
        await server.write_attribute_value(node.nodeid, ua.DataValue(
            ua.Variant(float(k + 10000 * g), ua.VariantType.Double),
            SourceTimestamp=now, ServerTimestamp=now,
        ))


async def main():
    logging.basicConfig(level=logging.WARNING)
    port = int(sys.argv[1])
    shift = "--shift" in sys.argv
    pki = Path(sys.argv[sys.argv.index("--pki") + 1]) if "--pki" in sys.argv else None
    many = int(sys.argv[sys.argv.index("--many") + 1]) if "--many" in sys.argv else 0
    assert many <= 10000

    server = Server(user_manager=Users() if pki else None)
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/ferrule/")
    server.set_server_name("Ferrule test peer")
    if pki:
        # The application URI must match the one in the certificate.
        await server.set_application_uri("urn:ferrule:test:server")
        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from asyncua.crypto.truststore import TrustStore  # noqa: F401
        from cryptography.x509.oid import ExtendedKeyUsageOID

        pki.mkdir(parents=True, exist_ok=True)
        cert, key = pki / "server-cert.der", pki / "server-key.pem"
        await setup_self_signed_certificate(
            key, cert, "urn:ferrule:test:server", "127.0.0.1",
            [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
            {"countryName": "DE", "organizationName": "Ferrule tests"},
        )
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        server.set_security_policy([
            ua.SecurityPolicyType.NoSecurity,
            ua.SecurityPolicyType.Basic256Sha256_Sign,
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
        ])
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])

    if shift:
        await server.register_namespace("urn:ferrule:shifted")
    idx = await server.register_namespace(URI)
    line = await server.nodes.objects.add_object(ua.NodeId("Line1", idx), "Line1")
    for ident, vtype, value in NODES:
        var = await line.add_variable(ua.NodeId(ident, idx), str(ident), ua.Variant(value, vtype))
        if "--writable" in sys.argv:
            await var.set_writable()
    counter = await line.add_variable(ua.NodeId("Counter", idx), "Counter",
                                      ua.Variant(0.0, ua.VariantType.Double))
    uncertain = await line.add_variable(ua.NodeId("Line1.Uncertain", idx), "Uncertain",
                                        ua.Variant(1.0, ua.VariantType.Double))
    await uncertain.write_value(ua.DataValue(
        ua.Variant(7.25, ua.VariantType.Double),
        StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue),
    ))
    sessions = await line.add_variable(ua.NodeId("Sessions", idx), "Sessions",
                                       ua.Variant(0.0, ua.VariantType.Double))
    count_sessions(server, sessions)
    many_nodes = [
        await line.add_variable(ua.NodeId(f"Many.{k}", idx), f"Many.{k}",
                                ua.Variant(0.0, ua.VariantType.Double))
        for k in range(many)
    ]
    await write_generation(server, many_nodes, 0)
    async with server:
        n = 0
        while True:
            await asyncio.sleep(0.1)
            n += 1
            await counter.write_value(ua.Variant(float(n), ua.VariantType.Double))
            if many_nodes and n % 10 == 0:
                await write_generation(server, many_nodes, n // 10)


if __name__ == "__main__":
    asyncio.run(main())
