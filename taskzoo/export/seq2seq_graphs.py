"""What an encoder-decoder (translation, Whisper-style speech recognition) exports: three graphs.

- ``encoder``: the encoder's inputs (``input_ids`` + ``attention_mask``, or ``input_features``) ->
  ``last_hidden_state``.
- ``cross_attention``: ``encoder_hidden_states`` -> each decoder layer's cross-attention keys and values
  (``cross.N.key`` / ``cross.N.value``). They depend on the source alone, so they are computed once per source,
  not once per generated token.
- ``decoder``: ``input_ids`` (the new decoder tokens), ``encoder_attention_mask`` (text models), the
  self-attention keys and values of the tokens before them (``past.N.key`` / ``past.N.value``) and the
  cross-attention ones -> ``logits`` and the self-attention keys and values with the new tokens appended
  (``present.N.key`` / ``present.N.value``).

One decoder graph serves every step: the first step passes a past of length 0 (with the whole decoder prompt), the
later ones the previous step's present. Optimum's layout (a first-step decoder beside a with-past decoder, or both
merged behind an If node) stores the decoder's weights twice or branches at every step; here they are stored and
loaded once, and the one thing a first step needs beyond the others, the cross-attention projections, is a graph of
its own. Each graph calls the transformers model itself (its decoder with an ``EncoderDecoderCache`` built from the
flat tensors), so an architecture whose decoder keeps its keys and values in that cache exports this way unchanged.
"""

from __future__ import annotations

import torch

EXAMPLE_PAST = 3  # past tokens in the traced example (not 0 or 1: torch.export would fix such a size)


def kv_names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def _layer(keys: torch.Tensor, values: torch.Tensor):
    from transformers.cache_utils import DynamicLayer

    layer = DynamicLayer()
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values
    return layer


def cache_of(past: list[torch.Tensor], cross: list[torch.Tensor]):
    """An EncoderDecoderCache holding these flat tensors (key, value per layer), the cross-attention part marked
    as computed, so that the decoder reads it rather than projecting the encoder's states again."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    self_attention, cross_attention = DynamicCache(), DynamicCache()
    self_attention.layers = [_layer(past[i], past[i + 1]) for i in range(0, len(past), 2)]
    cross_attention.layers = [_layer(cross[i], cross[i + 1]) for i in range(0, len(cross), 2)]
    cache = EncoderDecoderCache(self_attention, cross_attention)
    cache.is_updated = dict.fromkeys(range(len(cross_attention.layers)), True)
    return cache


def flat(cache) -> list[torch.Tensor]:
    """A DynamicCache's tensors: key, value of each layer in turn."""
    return [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]


class EncoderGraph(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, **inputs):
        return {"last_hidden_state": self.encoder(**inputs).last_hidden_state}


class CrossAttentionGraph(torch.nn.Module):
    """The encoder's states -> each decoder layer's cross-attention keys and values: the model runs one decoder step
    and its cache keeps them. The exporter drops the rest of that step, which no output reads."""

    def __init__(self, model):
        super().__init__()
        self.model, self.start = model, model.config.decoder_start_token_id

    def forward(self, encoder_hidden_states):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        start = torch.full((encoder_hidden_states.shape[0], 1), self.start, dtype=torch.long,
                           device=encoder_hidden_states.device)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self.model(encoder_outputs=(encoder_hidden_states,), decoder_input_ids=start, cache=cache, use_cache=True)
        cross = flat(cache.cross_attention_cache)
        return dict(zip(kv_names("cross", len(cross) // 2), cross))


class DecoderGraph(torch.nn.Module):
    """New decoder tokens, the past and cross keys/values -> logits and the present keys/values."""

    def __init__(self, model, layers: int):
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, input_ids, encoder_attention_mask=None, **keys_values):
        past = [keys_values[name] for name in kv_names("past", self.layers)]
        cross = [keys_values[name] for name in kv_names("cross", self.layers)]
        # The decoder reads the cached projections, not the encoder's states; it takes the batch size, the source
        # length and the dtype from this stand-in of the right shape.
        states = cross[0][:, 0]
        output = self.model(encoder_outputs=(states,), attention_mask=encoder_attention_mask, use_cache=True,
                            decoder_input_ids=input_ids, cache=cache_of(past, cross))
        present = flat(output.cache.self_attention_cache)
        return {"logits": output.logits, **dict(zip(kv_names("present", self.layers), present))}


@torch.no_grad()
def encoder_decoder_graphs(model, encoder_inputs: dict[str, torch.Tensor], encoder_axes: dict) -> list:
    """The three graphs of ``model`` (a transformers encoder-decoder), for a task's ``export_graphs()``.

    ``encoder_inputs``: a real batch of two for the encoder (its sizes other than the batch not 0 or 1), with an
    ``attention_mask`` where the source is padded (text), which the decoder then takes too; ``encoder_axes``: their
    dynamic axes, the source length named "source" (``{"input_ids": {0: "batch", 1: "source"}, ...}``).
    """
    from taskzoo.export import Graph

    model = model.eval()
    states = model.get_encoder()(**encoder_inputs).last_hidden_state
    mask = encoder_inputs.get("attention_mask")
    rows, start = states.shape[0], model.config.decoder_start_token_id
    # A real first step gives the example past (and the cross-attention keys and values) their shapes.
    first = model(encoder_outputs=(states,), attention_mask=mask, use_cache=True,
                  decoder_input_ids=torch.full((rows, EXAMPLE_PAST), start, dtype=torch.long))
    past, cross = flat(first.cache.self_attention_cache), flat(first.cache.cross_attention_cache)
    layers = len(cross) // 2
    past_names, cross_names = kv_names("past", layers), kv_names("cross", layers)
    batch_source = {0: "batch", 2: "source"}
    decoder_inputs = {"input_ids": torch.full((rows, 2), start, dtype=torch.long),
                      **({"encoder_attention_mask": mask} if mask is not None else {}),
                      **dict(zip(past_names, past)), **dict(zip(cross_names, cross))}
    decoder_axes = {"input_ids": {0: "batch", 1: "step"}, "encoder_attention_mask": {0: "batch", 1: "source"},
                    **{name: {0: "batch", 2: "past"} for name in past_names},
                    **dict.fromkeys(cross_names, batch_source)}
    return [Graph("encoder", EncoderGraph(model), dict(encoder_inputs), ["last_hidden_state"], encoder_axes),
            Graph("cross_attention", CrossAttentionGraph(model), {"encoder_hidden_states": states}, cross_names,
                  {"encoder_hidden_states": {0: "batch", 1: "source"}}),
            Graph("decoder", DecoderGraph(model, layers), decoder_inputs, ["logits", *kv_names("present", layers)],
                  {name: axes for name, axes in decoder_axes.items() if name in decoder_inputs})]


def export_settings(model) -> dict:
    """What generate needs of the torch model beyond its config, for the export's taskzoo.json: Whisper's counts
    feature frames per token from its encoder's two convolutions' strides."""
    convolutions = [getattr(model.get_encoder(), name, None) for name in ("conv1", "conv2")]
    if all(hasattr(conv, "stride") for conv in convolutions):
        return {"encoder_input_stride": convolutions[0].stride[0] * convolutions[1].stride[0]}
    return {}
