"""The messages of the public Petals API (upstream-protocols.md §12), as pydantic models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .engine import Sampling


class SamplingFields(BaseModel):
    """Decoding fields shared by both APIs. `do_sample` takes 0/1 as well as booleans."""

    model_config = ConfigDict(extra="ignore")

    do_sample: bool = False
    temperature: float | None = Field(default=None, ge=0)
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)

    def sampling(self) -> Sampling:
        return Sampling(
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_k=self.top_k or None,  # 0 means "off" in transformers' convention
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
        )


class HttpGenerate(SamplingFields):
    """`POST /api/v1/generate`: form fields or query parameters."""

    model: str
    inputs: str = ""
    max_length: int | None = Field(default=None, ge=1)
    max_new_tokens: int | None = Field(default=None, ge=1)


class OpenSession(BaseModel):
    """The first message on a socket: the model, and the token budget of the whole session."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["open_inference_session"]
    model: str
    max_length: int = Field(ge=1)


class GenerateStep(SamplingFields):
    """A `generate` message: new text (none to continue), tokens per step, and when to stop."""

    type: Literal["generate"]
    inputs: str | None = None
    max_new_tokens: int = Field(default=1, ge=1)
    stop_sequence: str | None = None
    extra_stop_sequences: list[str] | None = None
