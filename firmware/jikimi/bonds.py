"""Bond store: the BLE secrets MicroPython hands to the application (IRQ 29 get, IRQ 30 set),
the command counter of each bond (PROTOCOL.md §7.1) and the passkey's failed-attempt count
(§2.3), in one small file written atomically (write a temporary file, then rename it over the
old one: littlefs renames atomically), so a power cut leaves either the old bonds or the new
ones, never a mix.

Only authenticated bonds are kept (PROTOCOL.md §2.3). The secret IRQs therefore never write
flash and never change a kept bond: what the stack sets or deletes goes into `pending`, in RAM,
and `get` answers from it first, so the stack sees its own writes. The link commits it
(`commit`, from the app's task) once the pairing it belongs to has given an authenticated,
bonded link, and throws it away (`discard`) otherwise: a Just Works or failed pairing leaves no
trace, and a stranger's "repeat pairing" cannot delete the owner's bond.

Values are opaque bytes. A bond is a peer key (NimBLE's ble_addr_t: address type, then the 6
address bytes) with secrets of type 1 or 2; its command counter is kept under the same key and
goes with it. At most `max_bonds` are kept; a full store refuses a new bond instead of evicting
one. Our own secrets (the IRK, type 10) are committed as soon as the stack makes them and are
never forgotten.

A file that cannot be read is not silently dropped (aioble's weakness): it is kept aside as
`<path>.bad`, `error` says what was wrong, and the store starts empty so that the device still
runs and can be paired again.
"""

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


import json
import os

from jikimi.fs import exists

OUR_SECRET = const(1)  # NimBLE's store object types, as the secret IRQs pass them
PEER_SECRET = const(2)
OUR_IRK = const(10)  # MicroPython's own key for resolvable private addresses
_DELETED = ""  # a pending delete (a value is never empty hex: NimBLE values are structs)


def _is_peer(sec_type):
    return sec_type == OUR_SECRET or sec_type == PEER_SECRET


class BondStore:
    def __init__(self, path, max_bonds=4):
        self.path = path
        self.max_bonds = max_bonds
        self.error = None
        self._secrets = {}  # "type:keyhex" -> value hex (kept bonds and our own keys)
        self._peers = []  # bond key hexes, oldest bond first
        self._counters = {}  # bond key hex -> highest accepted command counter
        self._passkey_failures = ["", 0]  # [tag of the passkey, failed pairing attempts with it]
        self.pending = {}  # "type:keyhex" -> value hex, or _DELETED: from the stack, not kept yet
        self.unstored = 0  # secrets the stack handed over that the heap had no room for (IRQ)
        self._load()

    def _load(self):
        if exists(self.path + ".tmp"):
            os.remove(self.path + ".tmp")  # a write that never finished; the file is whole
        if not exists(self.path):
            return
        try:
            with open(self.path) as f:
                data = json.load(f)
            secrets, peers, counters = data["secrets"], data["peers"], data["counters"]
            failures = data.get("passkey_failures", ["", 0])
            if not (isinstance(secrets, dict) and isinstance(peers, list) and isinstance(counters, dict)
                    and isinstance(failures, list) and len(failures) == 2):
                raise ValueError("wrong shape")
        except (OSError, ValueError, KeyError, TypeError) as err:
            self.error = "%s: unreadable (%s); kept as %s.bad, starting with no bonds" % (
                self.path, err, self.path)
            try:
                os.rename(self.path, self.path + ".bad")
            except OSError:
                pass
            return
        # Counters of keys that are no bond (an older file kept them by address) are dropped.
        self._counters = {}
        for key_hex in peers:
            if key_hex in counters:
                self._counters[key_hex] = counters[key_hex]
        self._secrets, self._peers, self._passkey_failures = secrets, peers, failures

    def _save(self):
        data = {"secrets": self._secrets, "peers": self._peers, "counters": self._counters,
                "passkey_failures": self._passkey_failures}
        with open(self.path + ".tmp", "w") as f:
            json.dump(data, f)
        os.rename(self.path + ".tmp", self.path)

    @property
    def bonds(self):
        return len(self._peers)

    @property
    def full(self):
        return len(self._peers) >= self.max_bonds

    def is_bond(self, key_hex):
        return key_hex in self._peers

    # -- the secret IRQs: RAM only ------------------------------------------------------------

    def get(self, sec_type, index, key):
        """IRQ 29: the value for (sec_type, key), or with key None the index-th value of that
        type; None if there is none. Pending changes first: the stack reads what it wrote."""
        if key is not None:
            name = "%d:%s" % (sec_type, bytes(key).hex())
            value = self.pending.get(name)
            if value is None:
                value = self._secrets.get(name)
        else:
            prefix = "%d:" % sec_type
            merged = {}
            for table in (self._secrets, self.pending):
                for name in table:
                    if name.startswith(prefix):
                        merged[name] = table[name]
            names = sorted(n for n in merged if merged[n] != _DELETED)
            value = merged[names[index]] if index < len(names) else None
        if not value:  # None, or deleted while pending
            return None
        return bytes.fromhex(value)

    def set(self, sec_type, key, value):
        """IRQ 30: record (or with value None delete) a secret, in RAM. Returns True: the stack
        goes on; whether the secret is kept is decided when its pairing ends. False if the heap
        had no room for it: the secret is lost, counted in `unstored` (an int: no allocation),
        and the pairing it belongs to cannot make a whole bond (Link._bond)."""
        try:
            name = "%d:%s" % (sec_type, bytes(key).hex())
            self.pending[name] = _DELETED if value is None else bytes(value).hex()
        except MemoryError:
            self.unstored += 1
            return False
        return True

    # -- the app's task: flash -----------------------------------------------------------------

    def pending_peers(self):
        """The peer keys (hex) with a pending peer secret (type 2: NimBLE writes it after our
        own, type 1, so a peer listed here has all its keys)."""
        keys = []
        for name in self.pending:
            sec_type, key_hex = name.split(":")
            if int(sec_type) == PEER_SECRET and self.pending[name] != _DELETED and key_hex not in keys:
                keys.append(key_hex)
        return keys

    def commit_own(self):
        """Keep our own keys (the IRK) the stack made; drop nothing else. True if on flash."""
        changed = False
        for name in list(self.pending):
            if not _is_peer(int(name.split(":")[0])):
                value = self.pending.pop(name)
                if value == _DELETED:
                    changed = self._secrets.pop(name, None) is not None or changed
                else:
                    self._secrets[name] = value
                    changed = True
        return self._try_save() if changed else True

    def commit(self, key_hex):
        """Keep the pending secrets of peer `key_hex` as a bond, with a fresh command counter
        (a new pairing starts a new counter), replacing an older bond of the same key. Every
        other pending peer secret is thrown away. Returns True once it is on flash."""
        if key_hex not in self._peers and self.full:
            self.discard()
            return False
        self._drop_peer(key_hex)
        for name in list(self.pending):
            value = self.pending.pop(name)
            sec_type, name_key = name.split(":")
            if name_key == key_hex and _is_peer(int(sec_type)) and value != _DELETED:
                self._secrets[name] = value
        self._peers.append(key_hex)
        self._counters[key_hex] = 0
        if self._try_save():
            return True
        self._drop_peer(key_hex)  # not on flash: no bond (the phone pairs again)
        return False

    def discard(self):
        """Forget every pending peer secret (a pairing that did not give an authenticated bond)."""
        for name in list(self.pending):
            if _is_peer(int(name.split(":")[0])):
                del self.pending[name]

    def _try_save(self):
        try:
            self._save()
        except OSError:
            return False
        return True

    def _drop_peer(self, key_hex):
        if key_hex in self._peers:
            self._peers.remove(key_hex)
        for name in list(self._secrets):
            sec_type, name_key = name.split(":")
            if name_key == key_hex and _is_peer(int(sec_type)):
                del self._secrets[name]
        self._counters.pop(key_hex, None)

    def forget_all(self):
        """The owner's "forget all phones": every bond and its counter go; our own keys stay.
        They go from RAM at once (no forgotten phone gets in again while the bell runs); True
        once that is on flash too, False if the flash would not take it (the link says so)."""
        self.discard()
        for key_hex in list(self._peers):
            self._drop_peer(key_hex)
        for name in list(self._secrets):
            if _is_peer(int(name.split(":")[0])):
                del self._secrets[name]
        return self._try_save()

    # -- command counters (PROTOCOL.md §7.1) ---------------------------------------------------

    def counter(self, key_hex):
        """The highest command counter accepted from bond `key_hex`, 0 if none."""
        return self._counters.get(key_hex, 0)

    def accept_counter(self, key_hex, counter):
        """Persist a newly accepted counter before acting on the command (so a replay after a
        reboot is still refused). Only a bond has a counter: False for any other key, and False
        if the flash write failed (the command is answered INTERNAL and not acted on). The
        counter stays used in RAM either way: the frame must not become valid again."""
        if key_hex not in self._peers:
            return False
        self._counters[key_hex] = counter
        return self._try_save()

    # -- failed pairing attempts (PROTOCOL.md §2.3) --------------------------------------------

    def passkey_failures(self, tag):
        """Failed pairing attempts counted against the passkey whose tag is `tag`."""
        return self._passkey_failures[1] if self._passkey_failures[0] == tag else 0

    def count_passkey_failure(self, tag):
        """One more failed attempt against passkey `tag` (a new passkey starts from 0)."""
        self._passkey_failures = [tag, self.passkey_failures(tag) + 1]
        self._try_save()
        return self._passkey_failures[1]
