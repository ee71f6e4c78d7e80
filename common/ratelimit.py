"""The ONE token bucket (client-go's flowcontrol rate limiter, small): qps tokens per second, up to
burst. Pure arithmetic on the times it is given, so a ``common.clock`` (real or fake) drives it."""

from __future__ import annotations


class TokenBucket:
    """qps tokens per second, up to burst; ``take`` says how long until one is available."""

    def __init__(self, qps: float, burst: int, now: float) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError(f"invalid token bucket qps={qps} burst={burst}")
        self.qps, self.burst = qps, burst
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float) -> float:
        """Take a token (0.0) or say how many seconds until one is there (nothing taken)."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.qps)
        self.last = max(self.last, now)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.qps
