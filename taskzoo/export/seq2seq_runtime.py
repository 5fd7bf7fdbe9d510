"""An exported encoder-decoder on ONNX Runtime, used by the translation and speech tasks as the torch model is.

``encoder_decoder_model`` builds an instance of a subclass of the checkpoint's own transformers class (MarianMTModel,
WhisperForConditionalGeneration, ...) that holds no weights: its ``forward`` runs the three graphs of
``seq2seq_graphs`` and keeps their keys and values in transformers' ``EncoderDecoderCache``. So the class's own
``generate`` drives it, and beam search, length penalty, early stopping, forced first and last tokens, suppressed
tokens, Whisper's prompt, language detection and timestamps behave as on the torch model.
Plain greedy decoding takes taskzoo's own loop (``seq2seq_greedy``) where that gives the same tokens faster.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from taskzoo.export.seq2seq_graphs import cache_of, flat, kv_names

ENCODER_INPUTS = ("input_ids", "attention_mask", "input_features", "input_values")


class OrtEncoder:
    """What generate calls as the model's encoder: the encoder graph, returning transformers' BaseModelOutput."""

    def __init__(self, session, input_stride: int | None = None):
        self.session = session
        if input_stride:  # Whisper's generate reads its convolutions' strides to count feature frames per token
            self.conv1, self.conv2 = SimpleNamespace(stride=(input_stride,)), SimpleNamespace(stride=(1,))

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, input_ids=None, attention_mask=None, input_features=None, input_values=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        given = {"input_ids": input_ids, "attention_mask": attention_mask, "input_features": input_features,
                 "input_values": input_values}
        states = self.session.run({k: v for k, v in given.items() if v is not None})["last_hidden_state"]
        return BaseModelOutput(last_hidden_state=torch.from_numpy(states))


class OrtEncoderDecoder:
    """Placed before a transformers encoder-decoder class: that class's generate() over ONNX Runtime sessions."""

    def __init__(self, config, generation_config, sessions: dict, settings: dict):
        from transformers import PreTrainedModel

        PreTrainedModel.__init__(self, config)  # not the class's own __init__, which would build the torch layers
        self.generation_config = generation_config
        self.sessions = sessions
        decoder_inputs = sessions["decoder"].input_names
        self.layers = sum(name.startswith("past.") for name in decoder_inputs) // 2
        self.masked = "encoder_attention_mask" in decoder_inputs  # the source's padding (text models)
        self.past_names, self.cross_names = kv_names("past", self.layers), kv_names("cross", self.layers)
        self.present_names = kv_names("present", self.layers)
        # A size-0 parameter tells code that asks a model for its device and dtype (the tasks, generate) the CPU and
        # float32: the sessions take and return host arrays whatever device ONNX Runtime computes on.
        self.host = torch.nn.Parameter(torch.zeros(0), requires_grad=False)
        self.ort_encoder = OrtEncoder(sessions["encoder"], settings.get("encoder_input_stride"))
        # generate() looks for the encoder (to accept its arguments) under the class's base model, and Whisper's
        # generate for its convolutions there.
        setattr(self, self.base_model_prefix, SimpleNamespace(encoder=self.ort_encoder))

    def get_encoder(self, *args, **kwargs):
        return self.ort_encoder

    def train(self, mode: bool = True):
        if mode:
            raise ValueError("This model is an ONNX export for inference; fine-tune the torch model it came from.")
        return super().train(False)

    # ------------------------------------------------------------------------------ the graphs, on arrays
    def cross_attention(self, encoder_hidden_states: np.ndarray) -> list[np.ndarray]:
        outputs = self.sessions["cross_attention"].run({"encoder_hidden_states": encoder_hidden_states})
        return [outputs[name] for name in self.cross_names]

    def decode(self, input_ids: np.ndarray, encoder_mask: np.ndarray | None, past: list[np.ndarray],
               cross: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decoder call: new tokens (batch, n) -> logits (batch, n, vocabulary) and the present keys/values."""
        feeds = {"input_ids": input_ids, **dict(zip(self.past_names, past)), **dict(zip(self.cross_names, cross))}
        if self.masked:
            feeds["encoder_attention_mask"] = encoder_mask
        outputs = self.sessions["decoder"].run(feeds)
        return outputs["logits"], [outputs[name] for name in self.present_names]

    def source_mask(self, attention_mask, shape) -> np.ndarray | None:
        """The encoder attention mask the decoder graph takes (all ones where none is given), or None."""
        if not self.masked:
            return None
        return np.ones(shape, np.int64) if attention_mask is None else attention_mask.cpu().numpy().astype(np.int64)

    def empty_past(self, cross: list[np.ndarray]) -> list[np.ndarray]:
        batch, heads, _, size = cross[0].shape
        return [np.zeros((batch, heads, 0, size), np.float32)] * (2 * self.layers)

    # ------------------------------------------------------------------------------ transformers' side
    def forward(self, input_ids=None, attention_mask=None, input_features=None, input_values=None,
                decoder_input_ids=None, encoder_outputs=None, cache=None, use_cache=None, **kwargs):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache
        from transformers.modeling_outputs import Seq2SeqLMOutput

        if encoder_outputs is None:
            encoder_outputs = self.ort_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                               input_features=input_features, input_values=input_values)
        states = encoder_outputs[0]
        if not isinstance(cache, EncoderDecoderCache):  # none (use_cache=False), or a plain DynamicCache
            cache = EncoderDecoderCache(cache if cache is not None else DynamicCache(), DynamicCache())
        if cache.cross_attention_cache.get_seq_length() > 0:  # computed on the first step, kept by generate
            cross_tensors = flat(cache.cross_attention_cache)
            cross = [tensor.numpy() for tensor in cross_tensors]
        else:
            cross = self.cross_attention(states.numpy())
            cross_tensors = [torch.from_numpy(array) for array in cross]
        past = [tensor.numpy() for tensor in flat(cache.self_attention_cache)] if cache.get_seq_length() > 0 \
            else self.empty_past(cross)
        logits, present = self.decode(decoder_input_ids.numpy(), self.source_mask(attention_mask, states.shape[:2]),
                                      past, cross)
        # A cache generate keeps, so that beam search reorders it and Whisper's generate reads it as usual.
        cache = cache_of([torch.from_numpy(array) for array in present], cross_tensors)
        return Seq2SeqLMOutput(logits=torch.from_numpy(logits), cache=cache if use_cache is not False else None)

    def generate(self, *args, **kwargs):
        from taskzoo.export import seq2seq_greedy

        tokens = seq2seq_greedy.generate(self, *args, **kwargs)
        return tokens if tokens is not None else super().generate(*args, **kwargs)


def encoder_decoder_model(path: str | Path, sessions: dict, trust_remote_code: bool = False):
    """The stand-in for the export in ``path`` (its config.json, generation_config.json and taskzoo.json), whose
    ``sessions`` map "encoder", "cross_attention" and "decoder" to :class:`taskzoo.export.Session`\\ s."""
    import transformers
    from transformers import AutoConfig, GenerationConfig

    path = Path(path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    generation_config = GenerationConfig.from_pretrained(path) if (path / "generation_config.json").exists() \
        else GenerationConfig.from_model_config(config)
    names = getattr(config, "architectures", None) or []
    base = getattr(transformers, names[0], None) if names else None
    if base is None:
        raise ValueError(f"{path}/config.json names no transformers model class ({names}); export the model again.")
    settings = json.loads((path / "taskzoo.json").read_text()) if (path / "taskzoo.json").exists() else {}
    model_class = type(f"Ort{base.__name__}", (OrtEncoderDecoder, base), {})
    return model_class(config, generation_config, sessions, settings).eval()


def save_encoder_decoder_files(model, processor, path: str | Path, settings: dict) -> None:
    """Beside the graphs: the processor, the config (its ``architectures`` name the class generate comes from), the
    generation config, and in taskzoo.json the task's ``settings`` with what generate needs of the torch model."""
    from taskzoo.export.seq2seq_graphs import export_settings

    processor.save_pretrained(path)
    model.config.save_pretrained(path)
    model.generation_config.save_pretrained(path)
    (Path(path) / "taskzoo.json").write_text(json.dumps({**settings, **export_settings(model)}, indent=2) + "\n")
