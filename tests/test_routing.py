"""Tier routing and configuration: every rule and table of the strategy document, with their
boundaries, and the environment variables with their defaults, overrides and bad values."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from pyengine.gateway.config import Config, ConfigError, normalize_host
from pyengine.gateway.routing import Selection, Task, Tier, select_model

CFG = Config()  # the document's defaults

# (task, expected model, expected tier): the task routing rules, boundaries included.
RULES = [
    ({"estimated_tokens": 99, "priority": 4}, "gemma3:1b", Tier.FAST),
    ({"estimated_tokens": 100, "priority": 4}, "gemma3n:e2b", Tier.PRIMARY),
    ({"estimated_tokens": 99, "priority": 5}, "gemma3n:e2b", Tier.PRIMARY),
    ({"estimated_tokens": 0, "priority": 0}, "gemma3:1b", Tier.FAST),
    ({"estimated_tokens": 500, "priority": 8}, "gemma3n:e2b", Tier.PRIMARY),
    ({"estimated_tokens": 500, "priority": 9}, "gemma3n:e4b", Tier.QUALITY),
    ({"estimated_tokens": 500, "priority": 10}, "gemma3n:e4b", Tier.QUALITY),
    ({"estimated_tokens": 500, "priority": 5, "requires_high_quality": True}, "gemma3n:e4b",
     Tier.QUALITY),
    # The fast path is checked first: a short low-priority task stays fast even if flagged.
    ({"estimated_tokens": 50, "priority": 4, "requires_high_quality": True}, "gemma3:1b",
     Tier.FAST),
    ({"estimated_tokens": 500, "priority": 5, "type": "code_generation"}, "gemma3:4b",
     Tier.ALTERNATIVE),
    ({"estimated_tokens": 50, "priority": 4, "type": "code_generation"}, "gemma3:1b", Tier.FAST),
    ({"estimated_tokens": 500, "priority": 9, "type": "code_generation"}, "gemma3n:e4b",
     Tier.QUALITY),
    ({"estimated_tokens": 500, "priority": 5, "type": "summarization"}, "gemma3n:e2b",
     Tier.PRIMARY),
]

JUDGES = [
    ("relevance", "gemma3n:e2b", Tier.PRIMARY, 512),
    ("faithfulness", "gemma3n:e4b", Tier.QUALITY, 1024),
    ("minimality", "gemma3:1b", Tier.FAST, 256),
    ("safety", "gemma3n:e4b", Tier.QUALITY, 1024),
]

BUDGETS = [
    (0, Tier.FAST), (499, Tier.FAST), (500, Tier.FAST), (999, Tier.FAST),
    (1000, Tier.PRIMARY), (1999, Tier.PRIMARY), (2000, Tier.ALTERNATIVE),
    (3999, Tier.ALTERNATIVE), (4000, Tier.QUALITY), (100_000, Tier.QUALITY),
]

COMPLEXITY = [("simple", "gemma3:1b"), ("medium", "gemma3n:e2b"), ("complex", "gemma3:4b"),
              ("critical", "gemma3n:e4b")]


@pytest.mark.parametrize("task,model,tier", RULES)
def test_task_routing_rules(task, model, tier):
    s = select_model(task, CFG)
    assert (s.model, s.tier) == (model, tier)
    assert s.reason


@pytest.mark.parametrize("judge,model,tier,max_tokens", JUDGES)
def test_judge_table(judge, model, tier, max_tokens):
    # A judge's table wins over the task rules (a short low-priority safety check still gets e4b).
    s = select_model({"judge": judge, "estimated_tokens": 10, "priority": 1}, CFG)
    assert (s.model, s.tier, s.max_tokens) == (model, tier, max_tokens)
    assert judge in s.reason


@pytest.mark.parametrize("budget,tier", BUDGETS)
def test_thinking_budget_table(budget, tier):
    s = select_model({"thinking_budget": budget, "priority": 9}, CFG)
    assert s.tier == tier and s.model == {Tier.FAST: "gemma3:1b", Tier.PRIMARY: "gemma3n:e2b",
                                          Tier.ALTERNATIVE: "gemma3:4b",
                                          Tier.QUALITY: "gemma3n:e4b"}[tier]


@pytest.mark.parametrize("complexity,model", COMPLEXITY)
def test_complexity_profile(complexity, model):
    assert select_model({"complexity": complexity, "priority": 9}, CFG).model == model


def test_rubric_optimisation_and_its_fallback():
    s = select_model({"type": "rubric_optimization", "estimated_tokens": 10, "priority": 1}, CFG)
    assert (s.model, s.tier, s.max_tokens, s.temperature) == (
        "gemma3n:e4b", Tier.QUALITY, 2048, 0.7)
    assert s.fallback is not None and s.fallback.model == "gemma3:4b"
    constrained = select_model({"type": "rubric_optimization", "resource_constrained": True}, CFG)
    assert (constrained.model, constrained.tier) == ("gemma3:4b", Tier.ALTERNATIVE)


def test_task_forms_and_camel_case():
    @dataclass
    class Mine:
        type: str = "code_generation"
        priority: int = 6
        estimated_tokens: int = 300
        requires_high_quality: bool = False

    assert select_model(Mine(), CFG).tier == Tier.ALTERNATIVE
    assert select_model(Task(estimated_tokens=10, priority=1), CFG).tier == Tier.FAST
    camel = {"type": "x", "priority": 3, "estimatedTokens": 20, "requiresHighQuality": False}
    assert select_model(camel, CFG).tier == Tier.FAST


@pytest.mark.parametrize("bad", [
    {"priority": 11}, {"priority": -1}, {"priority": 4.5}, {"priority": True},
    {"estimated_tokens": -1}, {"judge": "vibes"}, {"complexity": "hard"},
    {"requires_high_quality": "yes"}, {"thinking_budget": -5}, {"type": ""}, {"colour": "red"},
])
def test_bad_tasks_raise(bad):
    with pytest.raises(ValueError):
        select_model(bad, CFG)


def test_environment_overrides_models_and_logging(caplog):
    env = {"OLLAMA_FAST_MODEL": "tiny-fast", "OLLAMA_PRIMARY_MODEL": "tiny-primary",
           "OLLAMA_QUALITY_MODEL": "tiny-quality", "OLLAMA_ALTERNATIVE_MODEL": "tiny-alt",
           "MODEL_SELECTION_LOGGING": "true"}
    cfg = Config.from_env(env)
    with caplog.at_level(logging.INFO, logger="pyengine.gateway.routing"):
        got = [select_model(t, cfg).model for t in (
            {"estimated_tokens": 1, "priority": 1}, {"estimated_tokens": 500},
            {"priority": 9}, {"type": "code_generation", "estimated_tokens": 500})]
    assert got == ["tiny-fast", "tiny-primary", "tiny-quality", "tiny-alt"]
    assert len(caplog.records) == 4 and "tiny-quality" in caplog.records[2].getMessage()
    caplog.clear()
    quiet = Config.from_env({"MODEL_SELECTION_LOGGING": "false"})
    with caplog.at_level(logging.INFO, logger="pyengine.gateway.routing"):
        select_model({"priority": 9}, quiet)
    assert not caplog.records


def test_select_model_reads_the_environment(monkeypatch):
    monkeypatch.setenv("OLLAMA_QUALITY_MODEL", "from-env")
    s = select_model({"priority": 9})
    assert isinstance(s, Selection) and s.model == "from-env"


def test_config_defaults_are_the_documents():
    c = Config.from_env({})
    assert c.ollama_host == "http://localhost:11434"
    assert (c.primary_model, c.fast_model, c.quality_model, c.alternative_model) == (
        "gemma3n:e2b", "gemma3:1b", "gemma3n:e4b", "gemma3:4b")
    assert c.routing_strategy == "local-first" and c.fallback_enabled is False
    assert c.selection_logging is True and c.paid_api_enabled is False
    assert c.paid_api_max_monthly_spend == 20 and c.paid_api_failure_threshold == 3
    assert c.enable_kv_cache and c.enable_prompt_cache and c.max_cache_size_mb == 2048
    assert c.enable_batched_inference is True  # the one deliberate exception to the document
    assert (c.local_failure_threshold, c.timeout_ms) == (3, 30_000)


def test_config_overrides():
    c = Config.from_env({
        "OLLAMA_HOST": "example.org:9999", "MODEL_ROUTING_STRATEGY": "Local-Only",
        "MODEL_FALLBACK_ENABLED": "TRUE", "PAID_API_ENABLED": "1",
        "PAID_API_MAX_MONTHLY_SPEND": "0", "PAID_API_FAILURE_THRESHOLD": "5",
        "ENABLE_KV_CACHE": "no", "ENABLE_PROMPT_CACHE": "off",
        "ENABLE_BATCHED_INFERENCE": "false", "MAX_CACHE_SIZE_MB": "512.5", "UNRELATED": "x"})
    assert c.ollama_host == "http://example.org:9999" and c.routing_strategy == "local-only"
    assert c.fallback_enabled and c.paid_api_enabled and not c.paid_allowed
    assert c.paid_api_max_monthly_spend == 0 and c.paid_api_failure_threshold == 5
    assert not c.enable_kv_cache and not c.prefix_reuse and not c.enable_batched_inference
    assert c.max_cache_size_mb == 512.5
    assert Config.from_env({"PAID_API_ENABLED": "true"}).paid_allowed
    assert Config.from_env({"MODEL_SELECTION_LOGGING": "  "}).selection_logging  # blank = default


@pytest.mark.parametrize("var,value", [
    ("PAID_API_MAX_MONTHLY_SPEND", "-1"), ("PAID_API_MAX_MONTHLY_SPEND", "twenty"),
    ("PAID_API_MAX_MONTHLY_SPEND", "nan"), ("PAID_API_FAILURE_THRESHOLD", "0"),
    ("PAID_API_FAILURE_THRESHOLD", "2.5"), ("MAX_CACHE_SIZE_MB", "0"),
    ("MAX_CACHE_SIZE_MB", "lots"), ("PAID_API_ENABLED", "maybe"),
    ("ENABLE_BATCHED_INFERENCE", "2"), ("MODEL_ROUTING_STRATEGY", "paid-first"),
    ("OLLAMA_HOST", "ftp://x:1"), ("OLLAMA_HOST", "host:99999"), ("OLLAMA_HOST", "host:abc"),
    ("OLLAMA_HOST", "host:1/path"),
])
def test_bad_config_values_fail_at_start_up(var, value):
    with pytest.raises(ConfigError, match=var):
        Config.from_env({var: value})


@pytest.mark.parametrize("raw,url", [
    ("localhost", "http://localhost:11434"), (":8080", "http://localhost:8080"),
    ("0.0.0.0:11434", "http://0.0.0.0:11434"), ("https://h.example", "https://h.example:443"),
    ("http://127.0.0.1:5/", "http://127.0.0.1:5"), ("[::1]:7", "http://[::1]:7"),
])
def test_ollama_host_forms(raw, url):
    assert normalize_host(raw) == url
