"""DynamoDB: pyworkflow-engine 0.4.0's single table, purged with boto3.

URL: ``dynamodb://TABLE?region=us-east-1[&endpoint_url=http://host:port]
[&max_wcu_per_second=N][&retry_deadline=60s]``. Credentials come from the
standard AWS chain only; a URL carrying any is refused.

**Discovery.** Expired runs are streamed from GSI1 page by page, one key
range per terminal status: ``GSI1PK = RUNS AND GSI1SK BETWEEN '<status>#'
AND '<status>#<cutoff + 14 h>'``. GSI1SK's timestamp is never later than
``updated_at`` but keeps the writer's UTC offset, hence the 14 h of slack;
``updated_at``, parsed, decides. Parents come from a BatchGetItem, children
from GSI4 (``PARENT#<id>``); the shared planner orders them children first
and holds parents of survivors. Memory is bounded by the batch.

**Live-engine safety, and the order of deletes.** The engine's writes are
unconditional upserts and BatchWriteItem cannot carry conditions, so the
literal order "delete everything else, then the run item conditionally"
cannot be strict: when the condition fails, the other items are already
gone. Here the conditional delete of the run item *is* the commit, and
nothing else of the run is touched before it succeeds:

1. put a purge marker per run (``PK=RETENTION#PURGE#<00-15>``, ``SK=<run_id>``;
   16 partitions so the writes spread), in BatchWriteItems;
2. delete each run item with ``ConditionExpression attribute_exists(PK) AND
   status = :seen AND updated_at = :seen`` (children before parents, one
   height of the tree at a time, in parallel). A failed condition whose
   ``ReturnValuesOnConditionCheckFailure`` item exists means the engine
   changed the run: it keeps all its data, its ancestors are not attempted
   (``changed``/``held``), and its marker is removed again. No item means
   someone else deleted it: its leftovers are cascaded, it is not counted;
3. cascade, in dependency order: token items and the cancellation flag
   (tokens are found through the hooks), then the hooks and the ``RUN#<id>``
   partition (events, event counter, steps), then checkpoints (below);
4. delete the markers.

From step 2 on the engine cannot revive the run (``get_run`` returns None).
A marker whose run still exists is just a leftover of an interrupted step 1.

**Checkpoints.** ``CHECKPOINT#<run_id>:<step_id>`` items have no index and
their step ids need not appear in any event (user code can checkpoint under
any step id), so no key-based lookup is complete, and a Scan per batch would
be quadratic. Each purge therefore makes exactly one paged Scan (filter
``begins_with(PK, ...)``, ``Limit`` per page) after its batches and joins each
page by key (BatchGetItem) against the markers and the run records: the
join holds one page in memory, and the Scan is linear in the table. The same
Scan purges stream data, which has no index at all: signals by
``published_at``, terminal subscriptions by ``created_at``, acknowledgments by
``acknowledged_at``, each older than the cutoff. Soft-deleted schedules come
from GSI1 (``SCHEDULES``, ``deleted#``) and are deleted on condition that the
status and ``updated_at`` read are unchanged. A dry run writes no markers; it
asks the planner about each checkpoint's run instead, so its counts equal the
real purge's.

**Crashes.** A marker whose run record is gone means a committed run. The
next purge first finishes every such run's cascade (each step re-derives what
is left), its Scan removes their checkpoints, then it drops the markers. The
orphan sweep (``sweep_orphans``) is the safety net for everything else,
including what pyworkflow's own purge left behind: one paged Scan, each
candidate's run re-checked with a consistent BatchGetItem right before the
delete, with the grace period applied where the item records a time (event
counters and token items follow their run's latest event and their hook).

**Throughput and cost.** BatchWriteItem (25) and BatchGetItem (100) requests,
queries and the conditional deletes run on a small thread pool (``workers``,
default 8, for the network latency of the real service).
``UnprocessedItems``/``UnprocessedKeys`` and throttling are retried with
exponential backoff and full jitter until ``retry_deadline``, then a loud
``StorageError``; ``max_wcu_per_second`` paces writes (one second of burst).
Per purged run: 1 write unit for its conditional delete, 1 for the marker
put, 1 for the marker delete, and 1 per other item (items up to 1 KB).
"""

from .backend import DynamoDBBackend

__all__ = ["DynamoDBBackend"]
