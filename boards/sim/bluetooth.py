"""`bluetooth` for the virtual board: MicroPython's low-level BLE API (as on ESP32/NimBLE),
carried over the side channel to a Bumble host stack in the host half. Call signatures,
constants and IRQ payload shapes follow MicroPython's docs; differences are listed in
boards/sim/README.md.
"""

from simlink import link

FLAG_BROADCAST = 0x0001
FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010
FLAG_INDICATE = 0x0020
FLAG_AUTHENTICATED_SIGNED_WRITE = 0x0040
FLAG_AUX_WRITE = 0x0100
FLAG_READ_ENCRYPTED = 0x0200
FLAG_READ_AUTHENTICATED = 0x0400
FLAG_READ_AUTHORIZED = 0x0800
FLAG_WRITE_ENCRYPTED = 0x1000
FLAG_WRITE_AUTHENTICATED = 0x2000
FLAG_WRITE_AUTHORIZED = 0x4000

# IRQ payload fields that are addresses or data arrive as memoryviews, as on the device.
_ADDRESS_EVENTS = {1: 2, 2: 2, 7: 2, 8: 2}  # event -> index of the address in the tuple
_SECRET_GET = 29
_SECRET_SET = 30


class UUID:
    def __init__(self, value):
        if isinstance(value, UUID):
            value = value._text
        if isinstance(value, int):
            if not 0 <= value <= 0xFFFF:
                raise ValueError("invalid UUID")
            self._text = "%04x" % value
        elif isinstance(value, str):
            text = value.lower()
            if len(text.replace("-", "")) not in (4, 32):
                raise ValueError("invalid UUID")
            self._text = text
        elif isinstance(value, (bytes, bytearray)):
            if len(value) == 2:
                self._text = "%04x" % (value[0] | value[1] << 8)
            elif len(value) == 16:
                h = bytes(reversed(value)).hex()
                self._text = "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])
            else:
                raise ValueError("invalid UUID")
        else:
            raise TypeError("invalid UUID")

    def __eq__(self, other):
        return isinstance(other, UUID) and other._text == self._text

    def __hash__(self):
        return hash(self._text)

    def __str__(self):
        return self._text

    def __repr__(self):
        if len(self._text) == 4:
            return "UUID(0x%s)" % self._text
        return "UUID('%s')" % self._text


def _hex(data):
    if data is None:
        return None
    return bytes(data).hex()


def _unhex(value):
    return None if value is None else bytes.fromhex(value)


class BLE:
    _instance = None

    def __new__(cls):
        # MicroPython: BLE() always returns the same singleton.
        if BLE._instance is None:
            BLE._instance = object.__new__(cls)
            BLE._instance._handler = None
        return BLE._instance

    def __init__(self):
        pass

    def _call(self, op, *args):
        return link().call("ble_" + op, *args)

    def active(self, active=None):
        if active is None:
            return self._call("active", None)
        return self._call("active", bool(active))

    def config(self, *names, **values):
        if names and values:
            raise TypeError("config takes a name or keyword arguments, not both")
        if names:
            if len(names) != 1:
                raise TypeError("config takes one name")
            result = self._call("config_get", names[0])
            if names[0] == "mac":
                return (result[0], _unhex(result[1]))
            if names[0] == "gap_name":
                return _unhex(result)
            return result
        for key in values:
            value = values[key]
            if key == "gap_name":
                value = _hex(value.encode() if isinstance(value, str) else value)
            self._call("config_set", key, value)

    def irq(self, handler):
        self._handler = handler
        link().irq_handler = self._dispatch if handler is not None else None

    def _dispatch(self, event, data):
        handler = self._handler
        if handler is None:
            return None
        if event == _SECRET_GET:
            sec_type, index, key = data
            data = (sec_type, index, None if key is None else memoryview(_unhex(key)))
            value = handler(event, data)
            return _hex(value)
        if event == _SECRET_SET:
            sec_type, key, value = data
            data = (sec_type, memoryview(_unhex(key)), None if value is None else memoryview(_unhex(value)))
            return bool(handler(event, data))
        at = _ADDRESS_EVENTS.get(event)
        if at is not None:
            data = list(data)
            data[at] = memoryview(_unhex(data[at]))
        return handler(event, tuple(data))

    def gap_advertise(self, interval_us, adv_data=None, resp_data=None, connectable=True):
        self._call("gap_advertise", interval_us, _hex(adv_data), _hex(resp_data), connectable)

    def gap_disconnect(self, conn_handle):
        return self._call("gap_disconnect", conn_handle)

    def gap_pair(self, conn_handle):
        self._call("gap_pair", conn_handle)

    def gap_passkey(self, conn_handle, action, passkey):
        self._call("gap_passkey", conn_handle, action, passkey)

    def gatts_register_services(self, services_definition):
        definition = []
        for service in services_definition:
            uuid, characteristics = service[0], service[1]
            chars = []
            for char in characteristics:
                descriptors = []
                if len(char) > 2:
                    for desc in char[2]:
                        descriptors.append([str(UUID(desc[0])), desc[1]])
                chars.append([str(UUID(char[0])), char[1], descriptors])
            definition.append([str(UUID(uuid)), chars])
        handles = self._call("gatts_register_services", definition)
        return tuple(tuple(h) for h in handles)

    def gatts_read(self, value_handle):
        return _unhex(self._call("gatts_read", value_handle))

    def gatts_write(self, value_handle, data, send_update=False):
        self._call("gatts_write", value_handle, _hex(data), send_update)

    def gatts_notify(self, conn_handle, value_handle, data=None):
        self._call("gatts_notify", conn_handle, value_handle, _hex(data))

    def gatts_indicate(self, conn_handle, value_handle, data=None):
        self._call("gatts_indicate", conn_handle, value_handle, _hex(data))

    def gatts_set_buffer(self, value_handle, length, append=False):
        self._call("gatts_set_buffer", value_handle, length, append)
