"""The governed transport says, without a call, whether it would take a preview now."""
import asyncio

from bot.telegram.flood_governor import FloodGovernor, GovernedTransport
from handlers.richtext import RichText
from integrations.clock import ManualClock
from integrations.errors import RateLimited
from tests.fakes.transport import RecordingTransport

USER = 4242


class HeldTransport(RecordingTransport):
    """Sends wait until released: calls stay in flight and keep their places in the budget."""

    def __init__(self, clock) -> None:
        super().__init__(clock)
        self.release = asyncio.Event()

    async def send(self, chat_id, text, *, reply_to=None, preview=False, key=None):
        await self.release.wait()
        return await super().send(chat_id, text, reply_to=reply_to, preview=preview, key=key)


async def test_a_preview_is_not_taken_while_the_budget_is_down_to_the_share_kept_for_final_texts():
    clock = ManualClock()
    governor = FloodGovernor(clock, global_per_second=5)  # 1 place kept for final texts
    inner = HeldTransport(clock)
    transport = GovernedTransport(inner, governor)
    assert transport.takes_preview(USER)

    sends = [asyncio.ensure_future(transport.send(100 + i, RichText.plain("final"))) for i in range(4)]
    await clock.advance(0)
    assert not transport.takes_preview(USER)
    assert governor.snapshot().previews_deferred == 1

    inner.release.set()
    await asyncio.gather(*sends)
    await clock.advance(1.0)
    assert transport.takes_preview(USER)


async def test_a_preview_is_not_taken_in_a_chat_paused_by_a_flood_wait():
    clock = ManualClock()
    inner = RecordingTransport(clock)
    transport = GovernedTransport(inner, FloodGovernor(clock))
    inner.fail_next("send", RateLimited("flood", upstream="telegram", retry_after=5))
    sending = asyncio.ensure_future(transport.send(USER, RichText.plain("final")))
    await clock.advance(0)
    assert not transport.takes_preview(USER)
    assert transport.takes_preview(USER + 1)
    await clock.advance(5.0)
    assert transport.takes_preview(USER)
    await sending
