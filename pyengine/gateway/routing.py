"""Tier routing: which model serves a task, exactly as the model-selection strategy says.

Four tiers, each a model name from the configuration: fast (gemma3:1b), primary (gemma3n:e2b),
alternative (gemma3:4b) and quality (gemma3n:e4b). ``select_model(task)`` applies the document's
tables and rules, first match wins:

1. a DSPy judge (``task.judge``): relevance -> primary (512 tokens), faithfulness -> quality
   (1024), minimality -> fast (256), safety -> quality (1024: the document gives safety the
   quality model but no token limit, so it gets faithfulness' limit);
2. DSPy rubric optimisation (``type == "rubric_optimization"``): quality (2048 tokens,
   temperature 0.7), or the alternative tier under resource constraints;
3. a thinking budget (``task.thinking_budget``, tokens): the best tier whose budget fits —
   fast below 1000, primary from 1000, alternative from 2000, quality from 4000;
4. a complexity profile (``task.complexity``): simple -> fast, medium -> primary,
   complex -> alternative, critical -> quality;
5. the task routing rules: estimated tokens < 100 and priority < 5 -> fast; priority >= 9 or
   ``requires_high_quality`` -> quality; ``type == "code_generation"`` -> alternative;
   otherwise primary.

Every decision carries the model, the tier and the reason, and is logged (logger
``pyengine.gateway.routing``) when ``MODEL_SELECTION_LOGGING`` is on.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

from pyengine.gateway.config import Config

log = logging.getLogger("pyengine.gateway.routing")


class Tier(str, Enum):
    FAST = "fast"
    PRIMARY = "primary"
    ALTERNATIVE = "alternative"
    QUALITY = "quality"


# Neighbours tried, in order, when a tier's model cannot be served and MODEL_FALLBACK_ENABLED.
TIER_FALLBACKS = {
    Tier.QUALITY: (Tier.ALTERNATIVE, Tier.PRIMARY, Tier.FAST),
    Tier.ALTERNATIVE: (Tier.PRIMARY, Tier.QUALITY, Tier.FAST),
    Tier.PRIMARY: (Tier.ALTERNATIVE, Tier.FAST, Tier.QUALITY),
    Tier.FAST: (Tier.PRIMARY, Tier.ALTERNATIVE, Tier.QUALITY),
}

# (tier, max tokens) of each DSPy judge.
JUDGES = {
    "relevance": (Tier.PRIMARY, 512),
    "faithfulness": (Tier.QUALITY, 1024),
    "minimality": (Tier.FAST, 256),
    "safety": (Tier.QUALITY, 1024),
}
# (budget in tokens, tier, expected quality out of 10), ascending.
THINKING_BUDGETS = (
    (500, Tier.FAST, 6.2),
    (1000, Tier.PRIMARY, 8.5),
    (2000, Tier.ALTERNATIVE, 8.8),
    (4000, Tier.QUALITY, 9.1),
)
COMPLEXITY = {
    "simple": Tier.FAST,
    "medium": Tier.PRIMARY,
    "complex": Tier.ALTERNATIVE,
    "critical": Tier.QUALITY,
}
RUBRIC_OPTIMIZATION = "rubric_optimization"
CODE_GENERATION = "code_generation"
RUBRIC_MAX_TOKENS, RUBRIC_TEMPERATURE = 2048, 0.7
FAST_MAX_TOKENS, FAST_MAX_PRIORITY = 100, 5   # fast path: tokens < 100 and priority < 5
QUALITY_MIN_PRIORITY = 9


@dataclass(frozen=True)
class Task:
    """What the router looks at. ``priority`` runs 0..10 (9 and above is critical)."""

    type: str = "general"
    priority: int = 5
    estimated_tokens: int = 0
    requires_high_quality: bool = False
    judge: str | None = None
    thinking_budget: int | None = None
    complexity: str | None = None
    resource_constrained: bool = False

    @classmethod
    def of(cls, task: "Task | Mapping[str, Any] | Any") -> "Task":
        """A ``Task`` from a Task, a mapping or any object with these attributes.

        Mappings may use the document's camelCase names (``estimatedTokens``,
        ``requiresHighQuality``, ``thinkingBudget``). Bad values raise ``ValueError``.
        """
        if isinstance(task, Task):
            t = task
        else:
            aliases = {"estimatedTokens": "estimated_tokens",
                       "requiresHighQuality": "requires_high_quality",
                       "thinkingBudget": "thinking_budget",
                       "resourceConstrained": "resource_constrained", "judgeType": "judge"}
            names = {f.name for f in dataclasses.fields(cls)}
            if isinstance(task, Mapping):
                items = {aliases.get(k, k): v for k, v in task.items()}
                unknown = sorted(set(items) - names)
                if unknown:
                    raise ValueError(f"unknown task field(s): {', '.join(unknown)}")
            else:
                items = {n: getattr(task, n) for n in names if hasattr(task, n)}
            t = cls(**items)
        t._validate()
        return t

    def _validate(self) -> None:
        def integer(name: str, lo: int, hi: int | None = None, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            bad_type = isinstance(v, bool) or not isinstance(v, int)
            if bad_type or v < lo or (hi is not None and v > hi):
                span = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise ValueError(f"task {name} must be an integer {span}, got {v!r}")

        if not isinstance(self.type, str) or not self.type:
            raise ValueError(f"task type must be a non-empty string, got {self.type!r}")
        integer("priority", 0, 10)
        integer("estimated_tokens", 0)
        integer("thinking_budget", 0, optional=True)
        for name in ("requires_high_quality", "resource_constrained"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"task {name} must be a bool, got {getattr(self, name)!r}")
        if self.judge is not None and self.judge not in JUDGES:
            raise ValueError(f"unknown judge {self.judge!r} (known: {', '.join(JUDGES)})")
        if self.complexity is not None and self.complexity not in COMPLEXITY:
            raise ValueError(f"unknown complexity {self.complexity!r} "
                             f"(known: {', '.join(COMPLEXITY)})")


@dataclass(frozen=True)
class Selection:
    """The router's answer: the model, its tier, why, and settings the rule prescribes."""

    model: str
    tier: Tier
    reason: str
    max_tokens: int | None = None
    temperature: float | None = None
    fallback: "Selection | None" = None  # the document's fallback for this task, if it names one


def tier_model(tier: Tier, config: Config) -> str:
    """The model name configured for a tier."""
    return {Tier.FAST: config.fast_model, Tier.PRIMARY: config.primary_model,
            Tier.ALTERNATIVE: config.alternative_model,
            Tier.QUALITY: config.quality_model}[tier]


def _pick(task: Task, config: Config) -> Selection:
    def sel(tier: Tier, reason: str, **kw: Any) -> Selection:
        return Selection(tier_model(tier, config), tier, reason, **kw)

    if task.judge is not None:
        tier, max_tokens = JUDGES[task.judge]
        return sel(tier, f"{task.judge} judge -> {tier.value} tier", max_tokens=max_tokens)
    if task.type == RUBRIC_OPTIMIZATION:
        alternative = sel(Tier.ALTERNATIVE, "rubric optimisation under resource constraints -> "
                          "alternative tier", max_tokens=RUBRIC_MAX_TOKENS,
                          temperature=RUBRIC_TEMPERATURE)
        if task.resource_constrained:
            return alternative
        return sel(Tier.QUALITY, "rubric optimisation -> quality tier",
                   max_tokens=RUBRIC_MAX_TOKENS, temperature=RUBRIC_TEMPERATURE,
                   fallback=alternative)
    if task.thinking_budget is not None:
        budget, tier = THINKING_BUDGETS[0][0], THINKING_BUDGETS[0][1]
        for b, t, _quality in THINKING_BUDGETS:
            if task.thinking_budget >= b:
                budget, tier = b, t
        return sel(tier, f"thinking budget {task.thinking_budget} tokens -> {tier.value} tier "
                         f"(budget step {budget})")
    if task.complexity is not None:
        tier = COMPLEXITY[task.complexity]
        return sel(tier, f"{task.complexity} task -> {tier.value} tier")
    if task.estimated_tokens < FAST_MAX_TOKENS and task.priority < FAST_MAX_PRIORITY:
        return sel(Tier.FAST, f"estimated {task.estimated_tokens} tokens < {FAST_MAX_TOKENS} "
                              f"and priority {task.priority} < {FAST_MAX_PRIORITY} -> fast tier")
    if task.priority >= QUALITY_MIN_PRIORITY:
        return sel(Tier.QUALITY, f"priority {task.priority} >= {QUALITY_MIN_PRIORITY} -> "
                                 "quality tier")
    if task.requires_high_quality:
        return sel(Tier.QUALITY, "requires high quality -> quality tier")
    if task.type == CODE_GENERATION:
        return sel(Tier.ALTERNATIVE, "code generation -> alternative tier")
    return sel(Tier.PRIMARY, "default -> primary tier")


def select_model(task: "Task | Mapping[str, Any] | Any", config: Config | None = None) -> Selection:
    """Routes ``task`` (a ``Task``, a mapping or an object with its fields) to a tier's model.

    ``config`` defaults to ``Config.from_env()``; the decision is logged when selection logging
    is on.
    """
    config = config or Config.from_env()
    t = Task.of(task)
    selection = _pick(t, config)
    if config.selection_logging:
        log.info("route type=%s priority=%d tokens=%d -> %s (%s): %s", t.type, t.priority,
                 t.estimated_tokens, selection.model, selection.tier.value, selection.reason)
    return selection
