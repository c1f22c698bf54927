"""A random write workload on the synthetic hospital, for CDC and backfill tests."""

from __future__ import annotations

import random
import threading

import psycopg2

KINDS = ("insert", "update", "delete", "key_update", "big", "note", "truncate")
WEIGHTS = (30, 40, 15, 5, 3, 6, 1)


def random_transaction(
    cur: psycopg2.extensions.cursor, rng: random.Random, weights: tuple[int, ...] = WEIGHTS
) -> str:
    """One source transaction of a random kind: insert, update, delete, key update (of a
    provider), a big update, a note update (note_type only: a TOASTed note_text is sent as
    unchanged), or a truncate. Returns the kind."""
    kind = rng.choices(KINDS, weights=weights)[0]
    if kind == "insert":
        cur.execute(
            "INSERT INTO encounters SELECT max(encounter_id) + g, %s, 1, 'outpatient', "
            "'Cardiology', now(), NULL, 'I10', 'ACC' || g "
            "FROM encounters, generate_series(1, %s) g GROUP BY g",
            (rng.randint(1, 200), rng.randint(1, 20)),
        )
    elif kind == "update":
        cur.execute(
            "UPDATE labs SET value_numeric = value_numeric + 1, abnormal_flag = %s "
            "WHERE lab_id IN (SELECT lab_id FROM labs ORDER BY random() LIMIT %s)",
            (rng.choice(["H", "L", None]), rng.randint(1, 30)),
        )
    elif kind == "delete":
        cur.execute(
            "DELETE FROM medications WHERE medication_id IN "
            "(SELECT medication_id FROM medications ORDER BY random() LIMIT %s)",
            (rng.randint(1, 10),),
        )
    elif kind == "key_update":
        cur.execute(
            "UPDATE providers SET provider_id = provider_id + 100000, department = 'Moved' "
            "WHERE provider_id = (SELECT provider_id FROM providers ORDER BY random() LIMIT 1)"
        )
    elif kind == "big":
        cur.execute("UPDATE encounters SET primary_dx = %s", (rng.choice(["E11.9", "J45.909"]),))
    elif kind == "note":
        cur.execute(
            "UPDATE clinical_notes SET note_type = %s WHERE note_id IN "
            "(SELECT note_id FROM clinical_notes ORDER BY random() LIMIT 3)",
            (rng.choice(["progress", "discharge"]),),
        )
    else:
        cur.execute("TRUNCATE claims")
        cur.execute(
            "INSERT INTO claims SELECT g, g, 1, 'Medicare', NULL, 100, NULL, 'submitted', "
            "current_date FROM generate_series(1, %s) g",
            (rng.randint(1, 50),),
        )
    return kind


class Workload(threading.Thread):
    """Runs random transactions on the source until stopped; counts them."""

    def __init__(
        self, dsn: str, seed: int, pause: float = 0.0, weights: tuple[int, ...] = WEIGHTS
    ) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.pause = pause
        self.weights = weights
        self.kinds: dict[str, int] = dict.fromkeys(KINDS, 0)
        """Committed transactions per kind."""
        self.stop_event = threading.Event()
        self.transactions = 0
        self.error: BaseException | None = None
        self._committed = threading.Condition()

    def run(self) -> None:
        con = psycopg2.connect(self.dsn)
        try:
            while not self.stop_event.is_set():
                with con.cursor() as cur:
                    kind = random_transaction(cur, self.rng, self.weights)
                con.commit()
                with self._committed:
                    self.transactions += 1
                    self.kinds[kind] += 1
                    self._committed.notify_all()
                if self.pause:
                    self.stop_event.wait(self.pause)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
        finally:
            con.close()

    def wait_for(self, more: int) -> int:
        """Wait until `more` further transactions are committed (an event, not a time); the
        count then. Fails if the workload died (or, as a guard against a hang, after 120 s)."""
        with self._committed:
            wanted = self.transactions + more
            done = self._committed.wait_for(
                lambda: self.transactions >= wanted or not self.is_alive(), timeout=120
            )
            if self.error is not None:
                raise self.error
            assert done and self.transactions >= wanted, "the workload stopped committing"
            return self.transactions

    def stop(self) -> int:
        self.stop_event.set()
        self.join(timeout=60)
        if self.error is not None:
            raise self.error
        return self.transactions
