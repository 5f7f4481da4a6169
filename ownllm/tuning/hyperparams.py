"""Resolve a job's hyperparameters and LoRA settings: "auto" becomes numbers written back on the job.

n_epochs follows OpenAI's published heuristic (3 epochs, scaled so a run sees
between 100 and 25,000 examples, 1..25 epochs). batch_size is ~10% of the
examples (1..16): small steps suit LoRA on a CPU, where a step costs seconds.
learning_rate_multiplier "auto" is 1.0 of `BASE_LEARNING_RATE`, a LoRA rate
(1e-3 peak, linear warm-up then linear decay).

A job's `method` is `supervised` (the default) or `dpo`. DPO adds `beta` (auto 0.1,
how far the tuned model may move from the reference) and its "auto"
learning_rate_multiplier is `DPO_LR_MULTIPLIER`: a preference loss pushes the
two answers apart without bound, and at the SFT rate greedy output degenerates
within a few epochs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ownllm.errors import InvalidRequestError
from ownllm.formats.peft import SUPPORTED_TARGETS, lora_config

BASE_LEARNING_RATE = 1e-3
METHODS = ("supervised", "dpo")
DPO_BETA = 0.1
DPO_LR_MULTIPLIER = 0.2
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 3, 100, 25_000
MIN_EPOCHS, MAX_EPOCHS = 1, 25
ALL_TARGETS = SUPPORTED_TARGETS  # a job may train every target the engine serves
BASE_QUANTIZATIONS = ("none", "int8", "q8_0", "q4_0", "q4_1")  # the frozen base: see tuning.frozen


@dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float | None = None  # DPO only

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.learning_rate_multiplier

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ALL_TARGETS
    # the frozen base during training: "none" (the compute dtype) or a quantised form
    # (QLoRA-style, see ownllm.tuning.frozen); the adapter itself is trained in fp32
    base_quantization: str = "none"

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target_modules": list(self.target_modules)}

    def peft_config(self, base_model: str) -> dict[str, Any]:
        """The adapter_config.json of an adapter trained with these settings."""
        return lora_config(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            base_model_name_or_path=base_model,
        )

    @classmethod
    def from_peft_config(cls, config: dict[str, Any]) -> LoraSettings:
        """The settings of an adapter's (validated) adapter_config.json, to continue training it."""
        targets = config["target_modules"]
        if isinstance(targets, str):
            targets = [targets]
        return cls(
            r=int(config["r"]),
            alpha=float(config["lora_alpha"]),
            dropout=float(config.get("lora_dropout") or 0.0),
            target_modules=tuple(t for t in ALL_TARGETS if t in targets),
        )


def auto_epochs(num_examples: int) -> int:
    if num_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_EPOCHS, MIN_TARGET_EXAMPLES // max(1, num_examples))
    if num_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_EPOCHS, MAX_TARGET_EXAMPLES // num_examples)
    return TARGET_EPOCHS


def auto_batch_size(num_examples: int) -> int:
    return max(1, min(16, round(num_examples * 0.1)))


def _number(
    value: Any, name: str, kind: type, lo: float, hi: float, prefix: str = "hyperparameters"
) -> Any:
    param = f"{prefix}.{name}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"'{param}' must be \"auto\" or a number.", param=param)
    if kind is int and float(value) != int(value):
        raise InvalidRequestError(f"'{param}' must be a whole number.", param=param)
    if not lo <= value <= hi:
        raise InvalidRequestError(f"'{param}' must be between {lo} and {hi}.", param=param)
    return kind(value)


def check_requested(
    hp: dict[str, Any], method: str = "supervised", prefix: str = "hyperparameters"
) -> dict[str, Any]:
    """Validate the request's hyperparameters (numbers or "auto") without resolving them."""
    limits = {
        "n_epochs": (int, 1, 50),
        "batch_size": (int, 1, 256),
        "learning_rate_multiplier": (float, 1e-3, 100),
    }
    if method == "dpo":
        limits["beta"] = (float, 1e-3, 10)
    out = {}
    for name, value in hp.items():
        if name not in limits:
            raise InvalidRequestError(
                f"Unknown hyperparameter '{name}' for method {method} (use {', '.join(limits)}).",
                param=f"{prefix}.{name}",
            )
        out[name] = (
            "auto" if value in (None, "auto") else _number(value, name, *limits[name], prefix)
        )
    for name in limits:
        out.setdefault(name, "auto")
    return out


def requested_method(
    method: Any, hyperparameters: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """The job's method type and its validated hyperparameters ("auto" kept).

    `method` is OpenAI's `{"type": "supervised"|"dpo", "<type>": {"hyperparameters": {...}}}`;
    its hyperparameters override the (deprecated) top-level `hyperparameters`."""
    if method is None:
        method = {}
    if not isinstance(method, dict):
        raise InvalidRequestError("'method' must be an object.", param="method")
    kind = method.get("type")
    if kind is None:  # OpenAI's older form names only the method's object
        given = [m for m in METHODS if method.get(m) is not None]
        kind = given[0] if len(given) == 1 else "supervised"
    if kind not in METHODS:
        raise InvalidRequestError(
            f"'method.type' must be one of {', '.join(METHODS)}, not {kind!r}.",
            param="method.type",
        )
    for other in METHODS:
        if other != kind and method.get(other) is not None:
            raise InvalidRequestError(
                f"'method.{other}' was given for a job of method type {kind}.",
                param=f"method.{other}",
            )
    settings = method.get(kind)
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise InvalidRequestError(f"'method.{kind}' must be an object.", param=f"method.{kind}")
    inner = settings.get("hyperparameters")
    if inner is None:
        inner = {}
    if not isinstance(inner, dict):
        raise InvalidRequestError(
            f"'method.{kind}.hyperparameters' must be an object.",
            param=f"method.{kind}.hyperparameters",
        )
    outer = check_requested(hyperparameters or {}, kind)
    own = check_requested(inner, kind, prefix=f"method.{kind}.hyperparameters")
    return kind, {**outer, **{name: own[name] for name in inner}}


def resolve(hp: dict[str, Any], num_examples: int, method: str = "supervised") -> Hyperparameters:
    """Numbers for every "auto" given the training set's size."""
    requested = check_requested(hp, method)

    def pick(name: str, auto: Any) -> Any:
        return auto if requested[name] == "auto" else requested[name]

    is_dpo = method == "dpo"
    return Hyperparameters(
        n_epochs=pick("n_epochs", auto_epochs(num_examples)),
        batch_size=min(pick("batch_size", auto_batch_size(num_examples)), num_examples),
        learning_rate_multiplier=pick(
            "learning_rate_multiplier", DPO_LR_MULTIPLIER if is_dpo else 1.0
        ),
        beta=pick("beta", DPO_BETA) if is_dpo else None,
    )


def lora_settings(body: dict[str, Any] | None, defaults: LoraSettings) -> LoraSettings:
    """LoRA settings from the request's `lora` object (an ownllm extension) over the defaults."""
    body = dict(body or {})
    unknown = set(body) - {"r", "alpha", "dropout", "target_modules", "base_quantization"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequestError(
            f"Unknown LoRA setting '{name}' "
            "(use r, alpha, dropout, target_modules, base_quantization).",
            param=f"lora.{name}",
        )
    r = _lora_number(body.get("r", defaults.r), "r", int, 1, 256)
    alpha = _lora_number(body.get("alpha", defaults.alpha), "alpha", float, 0.01, 4096)
    dropout = _lora_number(body.get("dropout", defaults.dropout), "dropout", float, 0.0, 0.9)
    targets = body.get("target_modules", list(defaults.target_modules))
    if targets == "all-linear":
        targets = list(ALL_TARGETS)
    if not isinstance(targets, list) or not targets or any(t not in ALL_TARGETS for t in targets):
        raise InvalidRequestError(
            f"'lora.target_modules' must be a list drawn from {', '.join(ALL_TARGETS)}.",
            param="lora.target_modules",
        )
    ordered = tuple(t for t in ALL_TARGETS if t in targets)
    quantization = body.get("base_quantization", defaults.base_quantization)
    if quantization not in BASE_QUANTIZATIONS:
        raise InvalidRequestError(
            f"'lora.base_quantization' must be one of {', '.join(BASE_QUANTIZATIONS)}.",
            param="lora.base_quantization",
        )
    return LoraSettings(
        r=r,
        alpha=alpha,
        dropout=dropout,
        target_modules=ordered,
        base_quantization=quantization,
    )


def _lora_number(value: Any, name: str, kind: type, lo: float, hi: float) -> Any:
    try:
        return _number(value, name, kind, lo, hi)
    except InvalidRequestError as e:
        raise InvalidRequestError(
            e.message.replace("hyperparameters.", "lora."), param=f"lora.{name}"
        ) from None
