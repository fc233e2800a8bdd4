"""A device on the bench: its board (boards), the firmware image and its flash layout (image),
the mpremote session (session) that flashes (flash) and provisions (provision) it, its log line
(log_line) as `jikimi monitor` shows it (monitor), the test console's client (testconsole) and
the battery model (battery_life)."""
