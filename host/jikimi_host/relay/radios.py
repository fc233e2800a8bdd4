"""Picks the relay's radio from a transport name: `os` is the operating system's Bluetooth stack
(`radio_os.py`), anything else a Bumble HCI transport (`radio_bumble.py`). The only module that
knows both stacks; each is imported only when chosen (importing `_bleio` starts a bleak thread).
"""

from __future__ import annotations

from jikimi_host.relay.keystore import SqliteKeyStore
from jikimi_host.relay.radio import OS_TRANSPORT, Radio, Report


def open_radio(transport: str, keystore: SqliteKeyStore, report: Report) -> Radio:
    if transport == OS_TRANSPORT:
        from jikimi_host.relay.radio_os import OsRadio
        return OsRadio(report)
    from jikimi_host.relay.radio_bumble import BumbleRadio
    return BumbleRadio(transport, keystore, report)
