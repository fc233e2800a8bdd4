"""The bond store: atomic, bounded, never silently dropping a damaged file."""

import json

from jikimi.bonds import BondStore

PEER_A, PEER_B, PEER_C = b"\x01" + bytes(6), b"\x01" + bytes([1] * 6), b"\x01" + bytes([2] * 6)


def test_secrets_survive_a_reboot_and_list_by_index(tmp_path):
    store = BondStore(str(tmp_path / "bonds.json"))
    assert store.set(2, PEER_A, b"keys-a") and store.set(2, PEER_B, b"keys-b") and store.set(10, b"irk", b"i" * 16)
    again = BondStore(str(tmp_path / "bonds.json"))
    assert again.get(2, 0, PEER_A) == b"keys-a"
    assert sorted([again.get(2, 0, None), again.get(2, 1, None)]) == [b"keys-a", b"keys-b"]
    assert again.get(2, 2, None) is None and again.get(2, 0, PEER_C) is None
    assert again.get(10, 0, b"irk") == b"i" * 16
    assert again.bonds == 2


def test_a_bounded_number_of_bonds_the_oldest_goes(tmp_path):
    store = BondStore(str(tmp_path / "bonds.json"), max_bonds=2)
    store.set(2, PEER_A, b"a")
    store.accept_counter(PEER_A.hex(), 7)
    store.set(2, PEER_B, b"b")
    store.set(2, PEER_C, b"c")
    assert store.bonds == 2
    assert store.get(2, 0, PEER_A) is None and store.counter(PEER_A.hex()) == 0
    assert store.get(2, 0, PEER_C) == b"c"


def test_forget_all_keeps_our_own_keys(tmp_path):
    store = BondStore(str(tmp_path / "bonds.json"))
    store.set(2, PEER_A, b"a")
    store.set(10, b"irk", b"i" * 16)
    store.accept_counter(PEER_A.hex(), 3)
    store.forget_all()
    again = BondStore(str(tmp_path / "bonds.json"))
    assert again.bonds == 0 and again.get(2, 0, None) is None and again.counter(PEER_A.hex()) == 0
    assert again.get(10, 0, b"irk") == b"i" * 16


def test_command_counters_survive_a_reboot(tmp_path):
    store = BondStore(str(tmp_path / "bonds.json"))
    store.set(2, PEER_A, b"a")
    store.accept_counter(PEER_A.hex(), 41)
    assert BondStore(str(tmp_path / "bonds.json")).counter(PEER_A.hex()) == 41


def test_a_write_cut_by_a_power_loss_leaves_the_old_bonds(tmp_path):
    path = tmp_path / "bonds.json"
    BondStore(str(path)).set(2, PEER_A, b"a")
    (tmp_path / "bonds.json.tmp").write_text('{"secrets": {"2:')  # half written, never renamed
    store = BondStore(str(path))
    assert store.get(2, 0, PEER_A) == b"a" and store.error is None
    assert not (tmp_path / "bonds.json.tmp").exists()


def test_a_damaged_file_is_reported_and_kept_not_swallowed(tmp_path):
    path = tmp_path / "bonds.json"
    path.write_text('{"secrets": {"2:01": "zz"}, "peers": 3}')
    store = BondStore(str(path))
    assert store.error and "unreadable" in store.error and "bonds.json.bad" in store.error
    assert (tmp_path / "bonds.json.bad").exists()
    assert store.bonds == 0
    assert store.set(2, PEER_A, b"a")  # and pairing again works
    assert json.loads(path.read_text())["peers"] == [PEER_A.hex()]


def test_a_failing_flash_says_the_secret_was_not_stored(tmp_path):
    store = BondStore(str(tmp_path / "missing-folder" / "bonds.json"))
    assert store.set(2, PEER_A, b"a") is False
