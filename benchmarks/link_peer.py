"""A stand-in DAW on Ableton Link for the jam-sync test and benchmark: a peer at a tempo, steered on stdin.

``python benchmarks/link_peer.py 97`` joins (or starts) the Link session at 97 bpm with start/stop sync,
prints ``ready`` once its session is a second old, then obeys lines on stdin: ``tempo 110`` (prints ``tempo 110``), ``play 1``/``play 0``
(prints ``play 1``), ``state`` (prints ``state <its tempo> <other peers>``), ``quit``. Run it inside a private network namespace (``unshare -rn``), never on the
machine's network: Link finds peers by UDP multicast.
"""

from __future__ import annotations

import sys
import time

import link


def main(argv: list[str]) -> int:
    session = link.Link(float(argv[0]) if argv else 120.0)
    session.enabled = True
    session.startStopSyncEnabled = True
    # When two Link sessions meet, the one running longer keeps its timeline and tempo: a second's head
    # start makes this the session the bridge joins, as a DAW that was running before the bridge started.
    time.sleep(1.0)
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        state = session.captureAppSessionState()
        now = session.clock().micros()
        if words[0] == "state":  # what the DAW's own display would show
            print(f"state {state.tempo():.3f} {session.numPeers()}", flush=True)
            continue
        if words[0] == "tempo":
            state.setTempo(float(words[1]), now)
        elif words[0] == "play":
            state.setIsPlaying(words[1] == "1", now)
        session.commitAppSessionState(state)
        print(" ".join(words), flush=True)
    session.enabled = False
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
