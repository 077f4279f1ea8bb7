"""Throttles whose counting cannot race: one atomic counter per client and window in the shared cache.

DRF's ``SimpleRateThrottle`` reads a history list, decides, then writes it back: concurrent requests all read the
same history and all pass (60 concurrent signups against 20/hour let 47 through). Here each request takes a number
with ``cache.add`` + ``cache.incr`` — atomic in Redis (the production cache, ``REDIS_URL``) and in the local
memory cache — and only the first ``num_requests`` numbers of a window pass.
"""
import time

from django.core.cache import cache as default_cache
from rest_framework.throttling import ScopedRateThrottle


class AtomicScopedRateThrottle(ScopedRateThrottle):
    """``ScopedRateThrottle`` over fixed windows (``rate`` per window of its period), counted atomically."""

    cache = default_cache

    def allow_request(self, request, view):
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope:
            return True
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        self.now = self.timer()
        window = int(self.now // self.duration)
        self.key = f"{key}:w{window}"
        self._window_ends = (window + 1) * self.duration
        self.cache.add(self.key, 0, timeout=self.duration + 1)
        try:
            taken = self.cache.incr(self.key)
        except ValueError:  # the counter expired between add and incr: this request opens the window
            self.cache.add(self.key, 1, timeout=self.duration + 1)
            taken = 1
        return taken <= self.num_requests

    def wait(self):
        return max(self._window_ends - self.now, 0)

    def timer(self):
        return time.time()
