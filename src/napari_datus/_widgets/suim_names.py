"""The SUIM class codes spelled out, for the docks' tooltips and legend (no Qt).

Names as the SUIM paper gives them (Islam et al., IROS 2020; DESIGN.md section on SUIM):
``suim8`` uses the eight codes, ``suim6`` merges BW, PF and SR into ``BW+PF+SR``.
"""

from __future__ import annotations

SUIM_FULL_NAMES = {
    "BW": "background (waterbody)",
    "HD": "human divers",
    "PF": "aquatic plants and sea-grass",
    "WR": "wrecks and ruins",
    "RO": "robots (AUVs, ROVs, instruments)",
    "RI": "reefs and invertebrates",
    "FV": "fish and vertebrates",
    "SR": "sea-floor and rocks",
}


def full_name(name: str) -> str | None:
    """``"RO"`` -> ``"robots (AUVs, ROVs, instruments)"``, ``"BW+PF+SR"`` -> the three names
    joined by " + "; None for a name that is not made of SUIM codes."""
    codes = name.split("+")
    if not all(code in SUIM_FULL_NAMES for code in codes):
        return None
    return " + ".join(SUIM_FULL_NAMES[code] for code in codes)


def legend(names: list[str]) -> str:
    """One line naming each SUIM code among ``names`` ("HD human divers · RO robots …"),
    in their order; empty when none is a SUIM code."""
    codes = [code for name in names for code in name.split("+")]
    return " · ".join(f"{code} {SUIM_FULL_NAMES[code]}" for code in dict.fromkeys(codes)
                      if code in SUIM_FULL_NAMES)
