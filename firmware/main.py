# Entry point on the device: load the board's pin map and run the app.
import board
from jikimi.app import run

run(board)
