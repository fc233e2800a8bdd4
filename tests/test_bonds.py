"""The bond store: only committed (authenticated) bonds are kept, atomically and bounded; the
secret IRQs only touch RAM; counters belong to bonds; a damaged file is reported, not dropped."""

import json

from jikimi.bonds import BondStore

PEER_A, PEER_B, PEER_C = b"\x01" + bytes(6), b"\x01" + bytes([1] * 6), b"\x01" + bytes([2] * 6)
A, B, C = PEER_A.hex(), PEER_B.hex(), PEER_C.hex()


def bonded(store: BondStore, key: bytes, value: bytes) -> bool:
    """What the link does for an authenticated pairing: the stack sets types 1 and 2, then the
    link commits them."""
    store.set(1, key, value + b"-ours")
    store.set(2, key, value)
    return store.commit(key.hex())


def test_secrets_set_by_the_stack_stay_in_ram_until_committed(tmp_path):
    path = tmp_path / "bonds.json"
    store = BondStore(str(path))
    store.set(2, PEER_A, b"keys-a")
    assert store.get(2, 0, PEER_A) == b"keys-a"  # the stack reads back what it wrote
    assert not path.exists() and store.bonds == 0  # but nothing is on flash and no bond exists
    assert BondStore(str(path)).get(2, 0, PEER_A) is None  # a reboot now: gone


def test_a_discarded_pairing_leaves_no_trace(tmp_path):
    store = BondStore(str(tmp_path / "bonds.json"))
    store.set(1, PEER_A, b"x")
    store.set(2, PEER_A, b"y")
    store.discard()
    assert store.get(2, 0, PEER_A) is None and store.get(2, 0, None) is None and store.bonds == 0


def test_committed_bonds_survive_a_reboot_and_list_by_index(tmp_path):
    store = BondStore(str(tmp_path / "bonds.json"))
    assert bonded(store, PEER_A, b"keys-a") and bonded(store, PEER_B, b"keys-b")
    store.set(10, b"irk", b"i" * 16)
    assert store.commit_own()
    again = BondStore(str(tmp_path / "bonds.json"))
    assert again.get(2, 0, PEER_A) == b"keys-a" and again.get(1, 0, PEER_A) == b"keys-a-ours"
    assert sorted([again.get(2, 0, None), again.get(2, 1, None)]) == [b"keys-a", b"keys-b"]
    assert again.get(2, 2, None) is None and again.get(2, 0, PEER_C) is None
    assert again.get(10, 0, b"irk") == b"i" * 16
    assert again.bonds == 2


def test_a_pending_delete_hides_a_bond_but_only_a_commit_removes_it(tmp_path):
    """NimBLE deletes the old bond before a repeat pairing: until that pairing is authenticated,
    the owner's bond is only hidden from the stack, never gone."""
    store = BondStore(str(tmp_path / "bonds.json"))
    bonded(store, PEER_A, b"owner")
    store.set(2, PEER_A, None)
    assert store.get(2, 0, PEER_A) is None and store.get(2, 0, None) is None
    store.discard()  # the repeat pairing failed
    assert store.get(2, 0, PEER_A) == b"owner" and store.bonds == 1
    assert BondStore(str(tmp_path / "bonds.json")).get(2, 0, PEER_A) == b"owner"


def test_a_full_store_refuses_a_new_bond_and_evicts_nobody(tmp_path):
    store = BondStore(str(tmp_path / "bonds.json"), max_bonds=2)
    bonded(store, PEER_A, b"a")
    store.accept_counter(A, 7)
    bonded(store, PEER_B, b"b")
    assert store.full
    assert not bonded(store, PEER_C, b"c")
    assert store.bonds == 2 and store.get(2, 0, PEER_C) is None
    assert store.get(2, 0, PEER_A) == b"a" and store.counter(A) == 7


def test_pairing_again_replaces_that_bond_and_starts_a_fresh_counter(tmp_path):
    store = BondStore(str(tmp_path / "bonds.json"), max_bonds=1)
    bonded(store, PEER_A, b"old")
    store.accept_counter(A, 0xFFFFFFFF)
    assert bonded(store, PEER_A, b"new")  # the same phone, even with the store full
    assert store.get(2, 0, PEER_A) == b"new" and store.counter(A) == 0 and store.bonds == 1


def test_only_the_committed_peer_is_kept_other_pending_keys_go(tmp_path):
    store = BondStore(str(tmp_path / "bonds.json"))
    store.set(2, PEER_B, b"stranger")
    store.set(2, PEER_A, b"owner")
    assert sorted(store.pending_peers()) == sorted([A, B])
    assert store.commit(A)
    assert store.get(2, 0, PEER_B) is None and store.bonds == 1 and store.pending_peers() == []


def test_counters_belong_to_bonds(tmp_path):
    store = BondStore(str(tmp_path / "bonds.json"))
    assert store.accept_counter(A, 5) is False  # no bond, no counter
    bonded(store, PEER_A, b"a")
    assert store.accept_counter(A, 41)
    assert BondStore(str(tmp_path / "bonds.json")).counter(A) == 41


def test_forget_all_removes_bonds_and_counters_and_keeps_our_own_keys(tmp_path):
    store = BondStore(str(tmp_path / "bonds.json"))
    bonded(store, PEER_A, b"a")
    store.set(10, b"irk", b"i" * 16)
    store.commit_own()
    store.accept_counter(A, 3)
    store.forget_all()
    again = BondStore(str(tmp_path / "bonds.json"))
    assert again.bonds == 0 and again.get(2, 0, None) is None and again.counter(A) == 0
    assert again.get(10, 0, b"irk") == b"i" * 16
    assert json.loads((tmp_path / "bonds.json").read_text())["counters"] == {}


def test_forget_all_that_the_flash_will_not_take_still_forgets_them_in_ram(tmp_path):
    store = BondStore(str(tmp_path / "bonds.json"))
    bonded(store, PEER_A, b"a")
    (tmp_path / "bonds.json.tmp").mkdir()  # the temporary file cannot be written: EISDIR
    assert store.forget_all() is False  # reported, not raised out of the link's pump
    assert store.bonds == 0 and not store.is_bond(A) and store.get(2, 0, None) is None


def test_an_old_file_with_counters_by_address_loses_only_the_strays(tmp_path):
    path = tmp_path / "bonds.json"
    path.write_text(json.dumps({"secrets": {"2:" + A: "aa"}, "peers": [A],
                                "counters": {A: 9, "aabbccddeeff": 0xFFFFFFFF}}))
    store = BondStore(str(path))
    assert store.error is None and store.counter(A) == 9 and store.counter("aabbccddeeff") == 0


def test_failed_pairing_attempts_count_per_passkey(tmp_path):
    store = BondStore(str(tmp_path / "bonds.json"))
    assert store.count_passkey_failure("aaaa") == 1 and store.count_passkey_failure("aaaa") == 2
    assert BondStore(str(tmp_path / "bonds.json")).passkey_failures("aaaa") == 2
    assert store.passkey_failures("bbbb") == 0  # a newly provisioned passkey starts again
    assert store.count_passkey_failure("bbbb") == 1


def test_a_write_cut_by_a_power_loss_leaves_the_old_bonds(tmp_path):
    path = tmp_path / "bonds.json"
    bonded(BondStore(str(path)), PEER_A, b"a")
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
    assert bonded(store, PEER_A, b"a")  # and pairing again works
    assert json.loads(path.read_text())["peers"] == [A]


def test_a_failing_flash_says_the_bond_was_not_stored(tmp_path):
    store = BondStore(str(tmp_path / "missing-folder" / "bonds.json"))
    assert bonded(store, PEER_A, b"a") is False
    assert store.bonds == 0 and store.get(2, 0, PEER_A) is None  # not kept in RAM either


def test_a_counter_the_flash_cannot_store_is_refused_not_raised_and_stays_used(tmp_path):
    """accept_counter answers False (the link replies INTERNAL) instead of raising out of the
    link's task, which would leave the command without any RESULT."""
    folder = tmp_path / "flash"
    folder.mkdir()
    store = BondStore(str(folder / "bonds.json"))
    bonded(store, PEER_A, b"a")
    assert store.accept_counter(A, 5)
    (folder / "bonds.json.tmp").mkdir()  # the temporary file cannot be written: EISDIR
    assert store.accept_counter(A, 6) is False
    assert store.counter(A) == 6  # used all the same: that frame must not become valid again
    assert json.loads((folder / "bonds.json").read_text())["counters"][A] == 5
    (folder / "bonds.json.tmp").rmdir()  # the flash works again
    assert store.accept_counter(A, 7)
    assert BondStore(str(folder / "bonds.json")).counter(A) == 7
