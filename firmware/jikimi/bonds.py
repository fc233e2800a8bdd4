"""Bond store: the BLE secrets MicroPython hands to the application (IRQ 29 get, IRQ 30 set)
and the per-phone command counters that stop replays (PROTOCOL.md §7.1), in one small file
written atomically (write a temporary file, then rename it over the old one: littlefs renames
atomically), so a power cut leaves either the old bonds or the new ones, never a mix.

Values are opaque bytes. A bond is a peer whose secrets are of type 2 (NimBLE's peer security
record; the virtual board uses the same type); at most `max_bonds` are kept, and pairing a new
phone beyond that forgets the one least recently written. Our own secrets (e.g. the IRK,
type 10) are never evicted and survive `forget_all`.

A file that cannot be read is not silently dropped (aioble's weakness): it is kept aside as
`<path>.bad`, `error` says what was wrong, and the store starts empty so that the device still
runs and can be paired again.
"""

import json
import os

from jikimi.fs import exists

PEER_SECRET = 2


class BondStore:
    def __init__(self, path, max_bonds=4):
        self.path = path
        self.max_bonds = max_bonds
        self.error = None
        self._secrets = {}  # "type:keyhex" -> value hex
        self._peers = []  # peer key hexes, least recently written first
        self._counters = {}  # peer name -> highest accepted command counter
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
            if not (isinstance(secrets, dict) and isinstance(peers, list) and isinstance(counters, dict)):
                raise ValueError("wrong shape")
        except (OSError, ValueError, KeyError, TypeError) as err:
            self.error = "%s: unreadable (%s); kept as %s.bad, starting with no bonds" % (
                self.path, err, self.path)
            try:
                os.rename(self.path, self.path + ".bad")
            except OSError:
                pass
            return
        self._secrets, self._peers, self._counters = secrets, peers, counters

    def _save(self):
        data = {"secrets": self._secrets, "peers": self._peers, "counters": self._counters}
        with open(self.path + ".tmp", "w") as f:
            json.dump(data, f)
        os.rename(self.path + ".tmp", self.path)

    @property
    def bonds(self):
        return len(self._peers)

    def get(self, sec_type, index, key):
        """IRQ 29: the value stored for (sec_type, key), or with key None the index-th value
        of that type; None if there is none."""
        if key is not None:
            value = self._secrets.get("%d:%s" % (sec_type, bytes(key).hex()))
        else:
            prefix = "%d:" % sec_type
            names = sorted(n for n in self._secrets if n.startswith(prefix))
            value = self._secrets[names[index]] if index < len(names) else None
        return None if value is None else bytes.fromhex(value)

    def set(self, sec_type, key, value):
        """IRQ 30: store (or with value None delete) a secret. Returns True once it is on flash."""
        key_hex = bytes(key).hex()
        name = "%d:%s" % (sec_type, key_hex)
        if value is None:
            self._secrets.pop(name, None)
            if sec_type == PEER_SECRET:
                self._forget_peer(key_hex)
        else:
            self._secrets[name] = bytes(value).hex()
            if sec_type == PEER_SECRET:
                if key_hex in self._peers:
                    self._peers.remove(key_hex)
                self._peers.append(key_hex)
                while len(self._peers) > self.max_bonds:
                    self._forget_peer(self._peers[0])
        try:
            self._save()
        except OSError:
            return False
        return True

    def _forget_peer(self, key_hex):
        if key_hex in self._peers:
            self._peers.remove(key_hex)
        for name in list(self._secrets):
            if name.endswith(":" + key_hex) and not name.startswith("10:"):
                del self._secrets[name]
        self._counters.pop(key_hex, None)

    def forget_all(self):
        """The owner's "forget all phones": every bond and counter goes; our own keys stay."""
        for key_hex in list(self._peers):
            self._forget_peer(key_hex)
        for name in list(self._secrets):
            if name.startswith("%d:" % PEER_SECRET):
                del self._secrets[name]
        self._save()

    def counter(self, peer):
        """The highest command counter accepted from `peer` (a key hex), 0 if none."""
        return self._counters.get(peer, 0)

    def accept_counter(self, peer, counter):
        """Persist a newly accepted counter before acting on the command (so a replay after a
        reboot is still refused)."""
        self._counters[peer] = counter
        self._save()
