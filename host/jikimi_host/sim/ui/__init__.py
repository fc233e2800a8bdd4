"""The virtual bench in a browser (`jikimi sim --ui`, `jikimi demo --ui`): server.py serves
bench.html and streams the boards and the relay to it over a WebSocket, on loopback only."""
