"""The authors' four full-reference metrics (GMSD, ST-GMSD, ST-RRED, MS-SSIM): the "knowledge"
HEKE's heads imitate. ``metrics`` holds the per-frame math, ``pairs`` streams a (reference,
distorted) pair through it, ``cli`` is ``heke-fr``. See docs/ARCHITECTURE.md, "FR metrics".
"""
