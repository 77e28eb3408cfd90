"""The RMSprop configurations that several test files run through, labelled once."""

from __future__ import annotations

from typing import Any

BASIC_CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "momentum": {"momentum": 0.9},
    "centered": {"centered": True},
    "centered+momentum": {"centered": True, "momentum": 0.9},
    "weight_decay": {"weight_decay": 0.1},
}
