"""`gradlift collab ...` and `gradlift whoami`: pooled upgrades from the command line.

    gradlift whoami                                    your organization's id (others invite you by it)
    gradlift collab open NAME --pair P                 prints the collaboration id
    gradlift collab list | show COLLAB
    gradlift collab invite COLLAB ORG_ID               the opener invites an organization
    gradlift collab join COLLAB                        accept an invitation
    gradlift collab contribute COLLAB CHECKPOINT       consent to pool one of your checkpoints
    gradlift collab withdraw COLLAB CONTRIBUTION       take it back
    gradlift collab leave COLLAB [--member ORG_ID]     leave (or decline); the opener removes a member
    gradlift collab delete COLLAB                      the opener, while nothing pooled relies on it
    gradlift collab upgrade COLLAB [--task T] [--watch] start the pooled upgrade
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from app.client.http import Api


def add_commands(commands: argparse._SubParsersAction, service: argparse.ArgumentParser) -> None:
    commands.add_parser("whoami", parents=[service], help="print your organization's id")
    # --url / --api-key go on each action only: a subcommand's defaults would overwrite the parent's values.
    collab = commands.add_parser("collab", help="pool checkpoints with other organizations")
    actions = collab.add_subparsers(dest="action", required=True, metavar="ACTION")
    opened = actions.add_parser("open", parents=[service], help="open a collaboration; prints its id")
    opened.add_argument("name")
    opened.add_argument("--pair", required=True)
    actions.add_parser("list", parents=[service], help="the collaborations you belong to or are invited to")
    for name, text in (("show", "members and contributions"), ("join", "accept your invitation"),
                       ("delete", "delete it (the opener; nothing pooled may rely on it)")):
        actions.add_parser(name, parents=[service], help=text).add_argument("collaboration")
    invite = actions.add_parser("invite", parents=[service], help="invite an organization by its id")
    invite.add_argument("collaboration")
    invite.add_argument("organization", help="its id (`gradlift whoami` prints it)")
    give = actions.add_parser("contribute", parents=[service], help="pool one of your checkpoints")
    give.add_argument("collaboration")
    give.add_argument("checkpoint")
    take = actions.add_parser("withdraw", parents=[service], help="withdraw your contribution")
    take.add_argument("collaboration")
    take.add_argument("contribution")
    leave = actions.add_parser("leave", parents=[service], help="leave, or decline an invitation")
    leave.add_argument("collaboration")
    leave.add_argument("--member", help="the opener: remove this organization instead")
    pooled = actions.add_parser("upgrade", parents=[service], help="start the pooled upgrade; prints its id")
    pooled.add_argument("collaboration")
    pooled.add_argument("--task", help="the task's GT (default: the pair's GT for all tasks)")
    pooled.add_argument("--watch", action="store_true", help="follow it; prints the delta id; exit 1 if it fails")
    pooled.add_argument("--timeout", type=float, help="with --watch: give up after this many seconds")


def whoami(api: Api, _: argparse.Namespace) -> int:
    me = api.get("/v1/organizations/me")
    print(f"organization {me['name']}:")
    print(me["id"])
    return 0


def collab(api: Api, args: argparse.Namespace) -> int:
    return _ACTIONS[args.action](api, args)


def _describe(c: dict[str, Any]) -> None:
    print(f"{c['id']}  {c['name']!r}  pair {c['pair']}  you: {c['status']}")
    for m in c["members"]:
        print(f"  member {m['organization_id']} ({m['organization_name']}): {m['status']}")
    for k in c["contributions"]:
        print(f"  contribution {k['id']}: checkpoint {k['checkpoint_id']} of {k['organization_id']}")


def _open(api: Api, args: argparse.Namespace) -> int:
    created = api.post("/v1/collaborations", json={"name": args.name, "pair": args.pair})
    print(f"collaboration {created['name']!r} on pair {created['pair']} (invite with `gradlift collab invite "
          f"{created['id']} ORG_ID`):")
    print(created["id"])
    return 0


def _list(api: Api, _: argparse.Namespace) -> int:
    for c in api.get("/v1/collaborations")["data"]:
        _describe(c)
    return 0


def _show(api: Api, args: argparse.Namespace) -> int:
    _describe(api.get(f"/v1/collaborations/{args.collaboration}"))
    return 0


def _invite(api: Api, args: argparse.Namespace) -> int:
    api.post(f"/v1/collaborations/{args.collaboration}/invitations", json={"organization_id": args.organization})
    print(f"invited {args.organization} (it joins with `gradlift collab join {args.collaboration}`)")
    return 0


def _join(api: Api, args: argparse.Namespace) -> int:
    _describe(api.post(f"/v1/collaborations/{args.collaboration}/join"))
    return 0


def _contribute(api: Api, args: argparse.Namespace) -> int:
    row = api.post(f"/v1/collaborations/{args.collaboration}/contributions", json={"checkpoint_id": args.checkpoint})
    print(f"checkpoint {row['checkpoint_id']} contributed:")
    print(row["id"])
    return 0


def _delete(path: Callable[[Api, argparse.Namespace], str]) -> Callable[[Api, argparse.Namespace], int]:
    def run(api: Api, args: argparse.Namespace) -> int:
        gone = api.delete(path(api, args))
        print(f"deleted {gone['object']} {gone['id']}")
        return 0

    return run


def _member(api: Api, args: argparse.Namespace) -> str:
    """The member to remove: --member, else the caller (leaving)."""
    member = args.member or api.get("/v1/organizations/me")["id"]
    return f"/v1/collaborations/{args.collaboration}/members/{member}"


def _upgrade(api: Api, args: argparse.Namespace) -> int:
    from app.client.jobs import follow

    pair = api.get(f"/v1/collaborations/{args.collaboration}")["pair"]
    job = api.post("/v1/upgrades", json={"pair": pair, "task": args.task, "collaboration_id": args.collaboration})
    if not args.watch:
        print(f"pooled upgrade queued (follow it with `gradlift watch {job['id']}`):")
        print(job["id"])
        return 0
    return follow(api, job["id"], args.timeout)


_ACTIONS: dict[str, Callable[[Api, argparse.Namespace], int]] = {
    "open": _open, "list": _list, "show": _show, "invite": _invite, "join": _join, "contribute": _contribute,
    "withdraw": _delete(lambda _, a: f"/v1/collaborations/{a.collaboration}/contributions/{a.contribution}"),
    "leave": _delete(_member), "delete": _delete(lambda _, a: f"/v1/collaborations/{a.collaboration}"),
    "upgrade": _upgrade,
}
