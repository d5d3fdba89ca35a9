"""Stop sequences on a stream of text, for engines that cannot stop on strings themselves."""

from __future__ import annotations


class StopMatcher:
    """Feed text pieces; get back what is safe to emit and whether a stop sequence was hit.

    Text that could be the start of a stop sequence is held back until it is decided, so a
    stop string split across two tokens never leaks to the client.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return buf[: min(hits)]
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """At the natural end of generation, what was held back was not a stop after all."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
