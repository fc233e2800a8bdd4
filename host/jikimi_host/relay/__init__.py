"""The phone relay: receives the devices' events and turns them into SMS and calls."""
