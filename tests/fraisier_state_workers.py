"""Fraisier 0.84.2's own code writing its state, in a process of its own (as Fraisier runs beside the reader).

    python fraisier_state_workers.py serve           one JSON command a line on stdin, one JSON answer a line
    python fraisier_state_workers.py deploy N FRAISE ENV   N deployments (success, failed, rolled back in turn)
    python fraisier_state_workers.py refresh DIR     merge Fraisier's state into DIR's textfile, over and over

FRAISIER_DB_PATH, FRAISIER_CONFIG and the status directory come from the environment and the commands."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def serve() -> None:
    from fraisier.database import get_db
    from fraisier.status import DeploymentStatusFile, current_owner, reconcile_orphaned_deploys, write_status

    database = get_db()
    # Said once Fraisier has made its database: two processes that both make it at once (PRAGMA journal_mode=WAL)
    # can make one of them fail with "database is locked", a race of Fraisier's own start-up, not a deployment's.
    print("ready", flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        operation = command.pop("op")
        answer: object = None
        if operation == "start":
            answer = database.start_deployment(command["fraise"], command.get("environment", "production"),
                                               triggered_by="deploy")
        elif operation == "complete":
            database.complete_deployment(command["pk"], command["success"], error_message=command.get("error"))
        elif operation == "rolled_back":
            database.mark_deployment_rolled_back(command["pk"])
        elif operation == "status":
            owner = current_owner()
            if "owner_pid" in command:
                owner["owner_pid"] = command["owner_pid"]
            write_status(DeploymentStatusFile(command["fraise"], command.get("environment", "production"),
                                              state=command["state"], **owner),
                         status_dir=Path(command["status_dir"]))
        elif operation == "reconcile":
            answer = reconcile_orphaned_deploys(Path(command["status_dir"]))
        elif operation == "quit":
            return
        print(json.dumps(answer), flush=True)


def deploy(count: int, fraise: str, environment: str) -> None:
    """Deployments in the order Fraisier's deployer writes them: status file, row, final status, completion,
    rollback mark (success, failed, rolled back in turn)."""
    from fraisier.database import get_db
    from fraisier.status import DeploymentStatusFile, current_owner, write_status

    database = get_db()
    status_dir = Path(os.environ["FRAISIER_STATUS_DIR"])
    for number in range(count):
        write_status(DeploymentStatusFile(fraise, environment, state="deploying", **current_owner()), status_dir)
        pk = database.start_deployment(fraise, environment, triggered_by="deploy")
        outcome = ("success", "failed", "rolled_back")[number % 3]
        write_status(DeploymentStatusFile(fraise, environment, state=outcome, **current_owner()), status_dir)
        database.complete_deployment(pk, outcome == "success", error_message=None if outcome == "success" else
                                     "Health check failed after deployment")
        if outcome == "rolled_back":
            database.mark_deployment_rolled_back(pk)


def refresh(directory: str) -> None:
    from fraisier_textfile import TextfileStore
    from fraisier_textfile.changes import Changes
    from fraisier_textfile.errors import FraisierTextfileError
    from fraisier_textfile.sources.fraisier_state import participants

    store = TextfileStore(directory, participants=participants())
    print("ready", flush=True)
    while True:
        try:
            store.merge(Changes())
        except FraisierTextfileError:
            pass


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    elif sys.argv[1] == "deploy":
        deploy(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "refresh":
        refresh(sys.argv[2])
    os._exit(0)
