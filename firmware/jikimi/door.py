"""Door alarm state machine (CORE.md, "Door alarm").

    disarmed --arm--> exit delay --exit_delay_ms--> armed --door opens--> entry delay
    entry delay --entry_delay_ms--> alarm (loud, trigger door intrusion)
    disarm: from exit delay or armed, by the device or the phone;
            from entry delay or alarm, by the phone only (an intruder at the door must not be
            able to switch the alarm off on the device)

Door open/close events are always journaled (with the arming state at that moment); while
disarmed they are quiet. The tamper switch is reported whenever it changes; opened while the
alarm is armed or arming it raises the alarm at once (trigger tamper). If the door is still open
when the exit delay ends, the entry delay starts at once.

Commands return protocol error codes (E_OK, E_WRONG_STATE) so the device can answer the phone.
"""

from jikimi import protocol as p
from jikimi import ticks
from jikimi.config import ALARM_MAX_SIREN_MS, DOOR_ENTRY_DELAY_MS, DOOR_EXIT_DELAY_MS
from jikimi.alarm import Alarm


class DoorAlarm:
    def __init__(
        self, emit, door_open, now_ms, exit_delay_ms=DOOR_EXIT_DELAY_MS,
        entry_delay_ms=DOOR_ENTRY_DELAY_MS, max_siren_ms=ALARM_MAX_SIREN_MS
    ):
        self.emit = emit
        self.exit_delay_ms = exit_delay_ms
        self.entry_delay_ms = entry_delay_ms
        # The relay reports a door intrusion at once, so the device has no cancel window.
        self.alarm = Alarm(emit, cancel_window_ms=0, max_siren_ms=max_siren_ms)
        self.state = p.ARM_DISARMED
        self.door_open = bool(door_open)
        self.tampered = False
        self._until = None  # end of the exit or entry delay
        self.state_since = now_ms

    def _enter(self, state, now_ms, delay_ms=None):
        self.state = state
        self.state_since = now_ms
        self._until = None if delay_ms is None else ticks.add(now_ms, delay_ms)

    def _intrusion(self, trigger, battery_pct, now_ms):
        self._enter(p.ARM_ALARM, now_ms)
        self.alarm.raise_alarm(p.MODE_LOUD, trigger, battery_pct, now_ms)

    def restore_alarm(self, now_ms):
        """After a reboot with the intrusion alarm still live (the caller restored self.alarm):
        back in the alarm state, which only the phone can end."""
        self._enter(p.ARM_ALARM, now_ms)

    def door(self, opened, battery_pct, now_ms):
        self.poll(now_ms, battery_pct)
        opened = bool(opened)
        if opened == self.door_open:
            return
        self.door_open = opened
        self.emit(p.DOOR_OPENED if opened else p.DOOR_CLOSED, {"arm_state": self.state})
        if opened and self.state == p.ARM_ARMED:
            self._enter(p.ARM_ENTRY_DELAY, now_ms, self.entry_delay_ms)

    def tamper(self, tampered, battery_pct, now_ms):
        self.poll(now_ms, battery_pct)
        tampered = bool(tampered)
        if tampered == self.tampered:
            return
        self.tampered = tampered
        self.emit(p.TAMPER, {"tampered": 1 if tampered else 0})
        if tampered and self.state in (p.ARM_EXIT_DELAY, p.ARM_ARMED, p.ARM_ENTRY_DELAY):
            self._intrusion(p.TRIGGER_TAMPER, battery_pct, now_ms)

    def arm(self, source, now_ms):
        if self.state in (p.ARM_EXIT_DELAY, p.ARM_ARMED):
            return p.E_OK
        if self.state != p.ARM_DISARMED:
            return p.E_WRONG_STATE
        self.emit(p.ARMED, {"source": source})
        self._enter(p.ARM_EXIT_DELAY, now_ms, self.exit_delay_ms)
        return p.E_OK

    def disarm(self, source, now_ms):
        if self.state == p.ARM_DISARMED:
            return p.E_OK
        if self.state in (p.ARM_ENTRY_DELAY, p.ARM_ALARM) and source != p.SOURCE_PHONE:
            return p.E_WRONG_STATE
        self.alarm.cancel(source)
        self.emit(p.DISARMED, {"source": source})
        self._enter(p.ARM_DISARMED, now_ms)
        return p.E_OK

    def toggle(self, source, now_ms):
        """The device's arm/disarm gesture."""
        if self.state == p.ARM_DISARMED:
            return self.arm(source, now_ms)
        return self.disarm(source, now_ms)

    def deadline(self):
        alarm_deadline = self.alarm.deadline()
        if self._until is None:
            return alarm_deadline
        if alarm_deadline is not None and ticks.diff(alarm_deadline, self._until) < 0:
            return alarm_deadline
        return self._until

    def poll(self, now_ms, battery_pct):
        self.alarm.poll(now_ms)
        while self._until is not None and ticks.diff(now_ms, self._until) >= 0:
            at = self._until  # when the delay ended, whenever we are polled
            if self.state == p.ARM_EXIT_DELAY:
                if self.door_open:
                    self._enter(p.ARM_ENTRY_DELAY, at, self.entry_delay_ms)
                else:
                    self._enter(p.ARM_ARMED, at)
            else:
                self._intrusion(p.TRIGGER_DOOR_INTRUSION, battery_pct, at)
                self.alarm.poll(now_ms)
