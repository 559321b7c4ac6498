"""/health: a cheap live call to each upstream, all at once, each within a timeout."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from handlers.recent_errors import describe_error
from handlers.render import escape_markdown
from integrations.chain import ChainModel
from integrations.clock import Clock, wait_for
from integrations.redaction import Redactor

HEALTH_TIMEOUT = 10.0


@dataclass(frozen=True)
class HealthProbe:
    """A cheap live call to one upstream (list the models, read one schema); raises on trouble."""

    name: str
    probe: Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class HealthResult:
    name: str
    latency: float
    error: str | None = None


async def run_probes(probes: Sequence[HealthProbe], clock: Clock, timeout: float = HEALTH_TIMEOUT) -> list[HealthResult]:
    """Every probe at once, each within `timeout` on the injected clock; results in probe order."""

    async def run(health: HealthProbe) -> HealthResult:
        started = clock.monotonic()
        try:
            await wait_for(clock, health.probe(), timeout)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return HealthResult(health.name, clock.monotonic() - started, f"no answer within {timeout:g} s")
        except Exception as error:
            return HealthResult(health.name, clock.monotonic() - started, describe_error(error))
        return HealthResult(health.name, clock.monotonic() - started)

    return list(await asyncio.gather(*(run(probe) for probe in probes)))


def format_health(results: Sequence[HealthResult], redactor: Redactor) -> str:
    if not results:
        return "No upstream is configured, so there is nothing to probe."
    lines = ["**Health** (each upstream probed live)"]
    for result in results:
        name = escape_markdown(redactor(result.name))
        latency = f"{result.latency * 1000:.0f} ms"
        if result.error is None:
            lines.append(f"• {name}: ✅ answered in {latency}")
        else:
            lines.append(f"• {name}: ❌ {escape_markdown(redactor(result.error))} (after {latency})")
    return "\n".join(lines)


def chat_probes(models: Sequence[ChainModel]) -> list[HealthProbe]:
    """One probe per chat provider of the chain (`list_models`, the cheapest authenticated call)."""
    probes: list[HealthProbe] = []
    seen: set[int] = set()
    for model in models:
        provider = model.provider
        if id(provider) in seen or not hasattr(provider, "list_models"):
            continue
        seen.add(id(provider))
        probes.append(HealthProbe(str(getattr(provider, "name", model.ref.provider)), provider.list_models))
    return probes
