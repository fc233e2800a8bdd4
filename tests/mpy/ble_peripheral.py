# A peripheral in the style of MicroPython's BLE examples, for the virtual board's tests.
# Pairs by passkey (LE Secure Connections, MITM, bonding), keeps its bonds in secrets.json
# through the firmware's BondStore, notifies/indicates on request, prints one line per event.
# Usage: micropython ble_peripheral.py PASSKEY
import sys
import time

import bluetooth
from jikimi.bonds import BondStore
from micropython import const

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_GATTS_INDICATE_DONE = const(20)
_IRQ_MTU_EXCHANGED = const(21)
_IRQ_ENCRYPTION_UPDATE = const(28)
_IRQ_GET_SECRET = const(29)
_IRQ_SET_SECRET = const(30)
_IRQ_PASSKEY_ACTION = const(31)
_PASSKEY_ACTION_DISPLAY = const(3)
# characteristic flags: MicroPython's module has none of these names (its docs define them)
_FLAG_READ = const(0x0002)
_FLAG_WRITE = const(0x0008)
_FLAG_NOTIFY = const(0x0010)
_FLAG_INDICATE = const(0x0020)
_FLAG_READ_ENCRYPTED = const(0x0200)
_FLAG_READ_AUTHENTICATED = const(0x0400)
_FLAG_WRITE_ENCRYPTED = const(0x1000)
_FLAG_WRITE_AUTHENTICATED = const(0x2000)

_SERVICE = bluetooth.UUID("eb670101-ef64-4ea7-8de3-8e275b7c36fc")
_STATUS = (bluetooth.UUID("eb670102-ef64-4ea7-8de3-8e275b7c36fc"),
           _FLAG_READ | _FLAG_NOTIFY | _FLAG_INDICATE | _FLAG_READ_ENCRYPTED | _FLAG_READ_AUTHENTICATED)
_CONTROL = (bluetooth.UUID("eb670103-ef64-4ea7-8de3-8e275b7c36fc"),
            _FLAG_WRITE | _FLAG_WRITE_ENCRYPTED | _FLAG_WRITE_AUTHENTICATED)
_OPEN_CONTROL = (bluetooth.UUID("eb670105-ef64-4ea7-8de3-8e275b7c36fc"), _FLAG_WRITE)
_INFO = (bluetooth.UUID("eb670104-ef64-4ea7-8de3-8e275b7c36fc"), _FLAG_READ)

PASSKEY = int(sys.argv[1]) if len(sys.argv) > 1 else 123456
ADDR_MODE = int(sys.argv[2]) if len(sys.argv) > 2 else 0  # 2: resolvable private addresses


class Peripheral:
    def __init__(self, ble):
        self.ble = ble
        self.bonds = BondStore("secrets.json")
        self.conn = None
        self.bonding = False
        ble.irq(self.irq)
        ble.active(True)
        ble.config(bond=True, mitm=True, le_secure=True, io=0, addr_mode=ADDR_MODE)
        self.bonds.commit_own()  # the IRK the stack made as it started
        ((self.status, self.control, self.info, self.open_control),) = ble.gatts_register_services(
            ((_SERVICE, (_STATUS, _CONTROL, _INFO, _OPEN_CONTROL)),))
        ble.gatts_write(self.status, b"status:0")
        ble.gatts_write(self.info, b"v1")
        ble.gatts_set_buffer(self.control, 64)
        self.advertise()

    def advertise(self):
        self.ble.gap_advertise(100000, b"\x02\x01\x06")
        # config("mac") is the identity address; with addr_mode=2 MicroPython's NimBLE binding
        # raises EINVAL for it (a TODO in modbluetooth_nimble.c), as on an ESP32
        print("advertising", self.ble.config("mac")[1].hex() if ADDR_MODE != 2 else "rpa")

    def irq(self, event, data):
        if event == _IRQ_CENTRAL_CONNECT:
            self.conn, addr_type, addr = data
            print("connect", self.conn, addr_type, bytes(addr).hex())
        elif event == _IRQ_CENTRAL_DISCONNECT:
            print("disconnect", data[0])
            self.conn = None
            self.advertise()
        elif event == _IRQ_GATTS_WRITE:
            conn, handle = data
            value = self.ble.gatts_read(handle)
            print("write", conn, value.decode())
            self.on_command(conn, value.decode())
        elif event == _IRQ_GATTS_INDICATE_DONE:
            print("indicate_done", data[0], data[1], data[2])
        elif event == _IRQ_MTU_EXCHANGED:
            print("mtu", data[0], data[1])
        elif event == _IRQ_ENCRYPTION_UPDATE:
            conn, encrypted, authenticated, bonded, key_size = data
            print("encryption", conn, int(encrypted), int(authenticated), int(bonded), key_size)
            # The firmware's rule: the stack's secrets are kept only from an authenticated bond
            # (NimBLE reports the encryption first, then hands over the keys).
            self.bonding = bool(encrypted and authenticated and bonded)
            self.commit()
        elif event == _IRQ_PASSKEY_ACTION:
            conn, action, passkey = data
            print("passkey_action", conn, action)
            if action == _PASSKEY_ACTION_DISPLAY:
                self.ble.gap_passkey(conn, action, PASSKEY)
        elif event == _IRQ_SET_SECRET:
            sec_type, key, value = data
            stored = self.bonds.set(sec_type, key, value)  # in RAM until the pairing ends
            print("set_secret", sec_type, len(self.bonds.pending_peers()))
            self.commit()
            return stored
        elif event == _IRQ_GET_SECRET:
            sec_type, index, key = data
            return self.bonds.get(sec_type, index, key)

    def commit(self):
        peers = self.bonds.pending_peers()
        if self.bonding and peers:
            print("bonded", int(self.bonds.commit(peers[0])), self.bonds.bonds)
        self.bonds.commit_own()

    def on_command(self, conn, command):
        if command.startswith("notify:"):
            for i in range(int(command[7:])):
                self.ble.gatts_notify(conn, self.status, b"n%d" % i)
        elif command == "indicate":
            self.ble.gatts_indicate(conn, self.status, b"indicated")
        elif command == "pair":
            self.ble.gap_pair(conn)
        elif command.startswith("status:"):
            self.ble.gatts_write(self.status, command.encode())


peripheral = Peripheral(bluetooth.BLE())
while True:
    time.sleep_ms(50)
