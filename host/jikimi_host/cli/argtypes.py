"""argparse types shared by the `jikimi` commands: a bad value is named with its option, exit 2."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def number_in(low: float, high: float, above: bool = False) -> Callable[[str], float]:
    """A finite float in low..high (above low, if `above`). argparse names the option in its
    message and exits 2, as for a value that is not a number at all."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < low or (above and value == low) or value > high:
            span = f"above {low:.12g} and at most {high:.12g}" if above else f"from {low:.12g} to {high:.12g}"
            raise argparse.ArgumentTypeError(f"must be a number {span}, got {text}")
        return value

    return parse


# --timeout on the device commands: seconds, above 0 (a day at most: longer is a typo)
timeout_s = number_in(0, 86400, above=True)
