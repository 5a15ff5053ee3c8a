"""Traceable forwards for torch.nn's transformer modules.

``nn.TransformerEncoderLayer``, ``nn.TransformerEncoder``, ``nn.TransformerDecoder`` and
``nn.Transformer`` branch on tensor properties (the inference fast path, nested tensors,
causal-mask detection), so FX cannot trace their ``forward`` and would keep them as
opaque leaves.  Their math is plain: norms, ``nn.MultiheadAttention``, a feed-forward
block and residual adds.  The tracer runs these forwards instead, which compute what
torch's general (non-fast) path computes, so attention heads, feed-forward widths and
the residual stream become visible to the channel rules.  Masks are passed to
``nn.MultiheadAttention`` as given; it validates them itself.  ``nn.TransformerDecoderLayer``
needs no substitute: its own forward traces once FX may enter it.
"""
from __future__ import annotations

from torch import nn


def _causal_hint(is_causal) -> bool:
    # torch turns None into a guess from the mask's values; the hint never changes results when a
    # mask is given, and MultiheadAttention needs a mask for is_causal=True anyway
    return bool(is_causal) if is_causal is not None else False


def _encoder_layer(m: nn.TransformerEncoderLayer, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
    x = src
    if m.norm_first:
        x = x + m._sa_block(m.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
        x = x + m._ff_block(m.norm2(x))
    else:
        x = m.norm1(x + m._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        x = m.norm2(x + m._ff_block(x))
    return x


def _encoder(m: nn.TransformerEncoder, src, mask=None, src_key_padding_mask=None, is_causal=None):
    output = src
    for layer in m.layers:
        output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                       is_causal=_causal_hint(is_causal))
    return m.norm(output) if m.norm is not None else output


def _decoder(m: nn.TransformerDecoder, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
             memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False):
    output = tgt
    for layer in m.layers:
        output = layer(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                       tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                       tgt_is_causal=_causal_hint(tgt_is_causal), memory_is_causal=memory_is_causal)
    return m.norm(output) if m.norm is not None else output


def _transformer(m: nn.Transformer, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None,
                 src_key_padding_mask=None, tgt_key_padding_mask=None, memory_key_padding_mask=None,
                 src_is_causal=None, tgt_is_causal=None, memory_is_causal=False):
    memory = m.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
    return m.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                     tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                     tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)


# Exact classes only: a subclass may override forward.
TRACEABLE_FORWARDS = {
    nn.TransformerEncoderLayer: _encoder_layer,
    nn.TransformerEncoder: _encoder,
    nn.TransformerDecoderLayer: nn.TransformerDecoderLayer.forward,
    nn.TransformerDecoder: _decoder,
    nn.Transformer: _transformer,
}
