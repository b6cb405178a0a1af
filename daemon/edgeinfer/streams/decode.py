"""Which decoder opens a stream: NVDEC where `decode` asks for it and it can run, else the CPU."""
from __future__ import annotations

from edgeinfer.config import StreamConfig
from edgeinfer.streams.sources import Source, open_cpu


def open_source(cfg: StreamConfig, device: int = 0) -> tuple[Source, str]:
    """Open the stream's source with the decoder `cfg.decode` asks for; NVDEC on GPU `device`
    (the stream's model's, so its frames are where the model reads them).

    Returns (source, note): note is why GPU decode was not used ("" when it was, or not asked).
    Raises SourceError with the reason.
    """
    note = ""
    if cfg.decode in ("gpu", "auto"):
        # Imported only when asked for: the CPU path never loads the GPU decoder's module.
        from edgeinfer.streams.nvdec import DecoderUnavailable, NvdecSource

        try:
            return NvdecSource.open(cfg, device), ""
        except DecoderUnavailable as exc:
            note = f"GPU decode unavailable, decoding on the CPU: {exc}"
    return open_cpu(cfg), note
