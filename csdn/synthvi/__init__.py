"""SynthVI, the embedded visible/infrared world: identities and captions (:mod:`~csdn.synthvi.world`), cameras
and drawing (:mod:`~csdn.synthvi.cameras`, :mod:`~csdn.synthvi.render`), the real datasets' on-disk layouts
(:mod:`~csdn.synthvi.layouts`), and the tiny CLIP pretrained on its captioned pool (:mod:`~csdn.synthvi.pool`,
:mod:`~csdn.synthvi.pretrain`, :mod:`~csdn.synthvi.zeroshot`).

Nothing under :mod:`csdn.data` imports this package: the real readers read SynthVI's trees like any other.
"""
