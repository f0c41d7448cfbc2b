"""Docker's image commands for nsmagic, shared by the CLI (`nsmagic images`) and the magic
(`%container images`): each takes its argument words, prints, and returns an exit status.
A user's mistake raises SpecError or NsmagicError with one sentence."""

from __future__ import annotations

import json

from ..errors import SpecError
from ..spec import OptionParser
from . import catalog, views
from .store import ImageNotFound, Store


def _parser(prog: str, description: str) -> OptionParser:
    return OptionParser(prog=f"nsmagic {prog}", description=description)


def images(argv: list[str]) -> int:
    _parser("images", "the images in this machine's store").parse_args(argv)
    print(views.images_table(Store().ensure()))
    return 0


def tag(argv: list[str]) -> int:
    p = _parser("tag", "give an image another name")
    p.add_argument("source")
    p.add_argument("target")
    args = p.parse_args(argv)
    store = Store().ensure()
    image = catalog.find(args.source, store)
    store.tag(args.target, store_descriptor(store, image))
    return 0


def store_descriptor(store: Store, image):
    from .store import MANIFEST, Descriptor
    return Descriptor(image.manifest.get("mediaType", MANIFEST), image.manifest_digest,
                      len(store.read_blob(image.manifest_digest)))


def rmi(argv: list[str]) -> int:
    p = _parser("rmi", "remove images (their names; their layers once nothing uses them)")
    p.add_argument("names", nargs="+", metavar="IMAGE")
    args = p.parse_args(argv)
    store = Store().ensure()
    for text in args.names:
        image = store.find(text)
        if image is None:
            raise ImageNotFound(f"there is no image {text} to remove; `nsmagic images` lists "
                                "them.")
        named = [n for n in image.names if n == _full_name(text)]
        for name in named or image.names:   # a name removes that name; an id, all of them
            store.untag(name)
            print(f"Untagged: {name}")
        if not store.is_named(image.manifest_digest):
            store.forget(image.manifest_digest)
            store.prune(everything=False)
            print(f"Deleted: {image.id}")
    return 0


def _full_name(text: str) -> str | None:
    from .reference import parse
    try:
        return parse(text).name
    except SpecError:
        return None


def inspect(argv: list[str]) -> int:
    p = _parser("inspect", "an image's config, layers and ids, as JSON")
    p.add_argument("names", nargs="+", metavar="IMAGE")
    args = p.parse_args(argv)
    store = Store().ensure()
    print(json.dumps([views.inspect(store, catalog.find(n, store)) for n in args.names],
                     indent=4))
    return 0


def history(argv: list[str]) -> int:
    p = _parser("history", "the steps that made an image, newest first")
    p.add_argument("name", metavar="IMAGE")
    args = p.parse_args(argv)
    store = Store().ensure()
    print(views.history_table(store, catalog.find(args.name, store)))
    return 0


def layers(argv: list[str]) -> int:
    """`nsmagic image layers IMAGE [N]`: each layer's size and waste, or layer N's files."""
    from . import draw, inspection
    p = _parser("image layers", "an image's layers: sizes and waste, or one layer's files "
                "(A added, C changed, D deleted)")
    p.add_argument("name", metavar="IMAGE")
    p.add_argument("index", metavar="N", type=int, nargs="?")
    args = p.parse_args(argv)
    store = Store().ensure()
    image = catalog.find(args.name, store)
    if args.index is not None:
        print(draw.layer_table(store, image, args.index))
        return 0
    rows = [["LAYER", "SIZE", "WASTED", "ENTRIES", "CREATED BY"]]
    for layer in inspection.layers(store, image):
        rows.append([str(layer.index), views.human_size(layer.size),
                     views.human_size(layer.wasted), str(len(layer.entries)),
                     " ".join(layer.created_by.split())[:60]])
    print(views.columns(rows))
    return 0


def prune(argv: list[str]) -> int:
    p = _parser("image prune", "remove layers and blobs that no image or container uses")
    p.add_argument("-f", "--force", action="store_true", help="(no prompt is asked anyway)")
    p.add_argument("-a", "--all", action="store_true", help="(every unnamed image goes)")
    p.parse_args(argv)
    count, freed = Store().ensure().prune()
    print(f"Deleted {count} unused blob(s) and layer(s)\nTotal reclaimed space: "
          f"{views.human_size(freed)}")
    return 0


def image(argv: list[str]) -> int:
    """`nsmagic image ls|rm|tag|inspect|history|prune|load|save`, as `docker image ...`."""
    subs = {"ls": images, "list": images, "rm": rmi, "tag": tag, "inspect": inspect,
            "history": history, "prune": prune, "layers": layers, **_archive_commands()}
    if not argv or argv[0] not in subs:
        raise SpecError(f"`nsmagic image {argv[0] if argv else ''}` is not known; use one of "
                        f"{', '.join(sorted(subs))}.")
    return subs[argv[0]](argv[1:])


def _archive_commands() -> dict:
    from . import archive
    return {"load": archive.load_command, "save": archive.save_command}


def build(argv: list[str], dockerfile_text: str | None = None, out=None, err=None) -> int:
    """`nsmagic build -t NAME [-f FILE] [--build-arg K=V] [--no-cache] DIR`; the magic
    passes the cell as `dockerfile_text`."""
    import os

    from .build import Builder, Options
    p = _parser("build", "build an image from a Dockerfile; each RUN in an nsmagic "
                "container, each instruction cached")
    p.add_argument("-t", "--tag", metavar="NAME", help="the image's name")
    p.add_argument("-f", "--file", metavar="FILE", help="the Dockerfile (default: "
                   "DIR/Dockerfile)")
    p.add_argument("--build-arg", action="append", default=[], metavar="K=V")
    p.add_argument("--network", default="none", help="RUN's network: none or host")
    p.add_argument("--no-cache", action="store_true", help="run every step again")
    p.add_argument("context", metavar="DIR")
    args = p.parse_args(argv)
    if not os.path.isdir(args.context):
        raise SpecError(f"the build context {args.context} is not a directory.")
    name = args.file or os.path.join(args.context, "Dockerfile")
    if dockerfile_text is None:
        try:
            with open(name) as f:
                dockerfile_text = f.read()
        except OSError as error:
            raise SpecError(f"cannot read the Dockerfile {name}: "
                            f"{error.strerror.lower()}.") from None
    build_args = {}
    for item in args.build_arg:
        key, sep, value = item.partition("=")
        build_args[key] = value if sep else os.environ.get(key, "")
    if args.tag:
        from .reference import parse
        parse(args.tag)
    options = Options(args.tag, args.context, build_args, args.network, args.no_cache)
    Builder(options, out=out, err=err).build(dockerfile_text, os.path.basename(name))
    return 0


# --- containers that stay


def ps_all(argv: list[str]) -> int:
    from . import containers
    _parser("ps -a", "every container, running or exited and kept").parse_args(argv)
    print(views.containers_table(containers.records(Store())))
    return 0


def rm(argv: list[str]) -> int:
    from . import containers
    p = _parser("rm", "remove containers that stay (their record, log and writable layer)")
    p.add_argument("-f", "--force", action="store_true", help="even one marked running")
    p.add_argument("names", nargs="+", metavar="CONTAINER")
    args = p.parse_args(argv)
    store = Store()
    for text in args.names:
        containers.remove(store, containers.find(store, text), args.force)
        print(text)
    return 0


def container_prune(argv: list[str]) -> int:
    from . import containers
    p = _parser("container prune", "remove every container that has exited")
    p.add_argument("-f", "--force", action="store_true", help="(no prompt is asked anyway)")
    p.parse_args(argv)
    store = Store()
    gone = [r for r in containers.records(store) if not r.running]
    for record in gone:
        containers.remove(store, record)
        print(f"Deleted: {record.id}")
    print(f"Deleted {len(gone)} container(s)")
    return 0


def diff(argv: list[str]) -> int:
    from . import inspection
    p = _parser("diff", "what a container changed in its image: A added, C changed, "
                "D deleted")
    p.add_argument("name", metavar="CONTAINER")
    args = p.parse_args(argv)
    for change in inspection.container_changes(Store().ensure(), args.name):
        print(f"{change.kind} {change.path}")
    return 0


def commit(argv: list[str]) -> int:
    from . import inspection
    p = _parser("commit", "a new image from a container's changes (its writable layer on "
                "top of its image)")
    p.add_argument("name", metavar="CONTAINER")
    p.add_argument("image", metavar="NAME", nargs="?")
    p.add_argument("-m", "--message", default="", help="a comment for its history")
    args = p.parse_args(argv)
    image = inspection.commit(Store().ensure(), args.name, args.image, args.message)
    print(image.id)
    return 0


def logs(argv: list[str]) -> int:
    import sys

    from . import containers
    p = _parser("logs", "what a container printed")
    p.add_argument("name", metavar="CONTAINER")
    args = p.parse_args(argv)
    containers.replay(containers.find(Store(), args.name), sys.stdout, sys.stderr)
    return 0


def container_inspect(argv: list[str]) -> int:
    from . import containers
    p = _parser("container inspect", "a container's record, as JSON")
    p.add_argument("names", nargs="+", metavar="CONTAINER")
    args = p.parse_args(argv)
    store = Store()
    print(json.dumps([containers.find(store, n).data for n in args.names], indent=4))
    return 0


def container(argv: list[str]) -> int:
    """`nsmagic container ls|rm|prune|inspect|diff|commit|logs`."""
    subs = {"ls": lambda a: ps_all([]), "list": lambda a: ps_all([]), "rm": rm,
            "prune": container_prune, "inspect": container_inspect, "diff": diff,
            "commit": commit, "logs": logs}
    if not argv or argv[0] not in subs:
        raise SpecError(f"`nsmagic container {argv[0] if argv else ''}` is not known; use "
                        f"one of {', '.join(sorted(subs))}.")
    return subs[argv[0]](argv[1:])


# --- registries


def pull(argv: list[str]) -> int:
    from . import registry
    p = _parser("pull", "an image from a registry (OCI distribution API); its platform's "
                "image from a multi-platform one")
    p.add_argument("name", metavar="REGISTRY/NAME[:TAG|@DIGEST]")
    p.add_argument("--insecure", action="store_true",
                   help="plain HTTP (only to a registry on loopback)")
    args = p.parse_args(argv)
    image = registry.pull(args.name, args.insecure)
    from .reference import parse
    print(f"Digest: {image.manifest_digest}\nStatus: downloaded {parse(args.name).name}")
    return 0


def push(argv: list[str]) -> int:
    from . import registry
    p = _parser("push", "an image to the registry its name names")
    p.add_argument("name", metavar="REGISTRY/NAME[:TAG]")
    p.add_argument("--insecure", action="store_true",
                   help="plain HTTP (only to a registry on loopback)")
    args = p.parse_args(argv)
    registry.push(args.name, args.insecure)
    return 0


def login(argv: list[str]) -> int:
    import sys

    from . import registry
    p = _parser("login", "check and keep credentials for a registry (~/.config/nsmagic, "
                "mode 0600)")
    p.add_argument("registry", metavar="REGISTRY")
    p.add_argument("-u", "--username", required=True)
    p.add_argument("--password-stdin", action="store_true", help="read the password from "
                   "stdin (the only way: a password on the command line is seen by ps)")
    p.add_argument("--insecure", action="store_true")
    args = p.parse_args(argv)
    if not args.password_stdin:
        raise SpecError("give the password on stdin: echo ... | nsmagic login REGISTRY -u "
                        "USER --password-stdin.")
    registry.login(args.registry, args.username, sys.stdin.readline().rstrip("\n"),
                   args.insecure)
    print("Login Succeeded")
    return 0


def logout(argv: list[str]) -> int:
    from . import registry
    p = _parser("logout", "forget the credentials for a registry")
    p.add_argument("registry", metavar="REGISTRY")
    args = p.parse_args(argv)
    print(f"Removing login credentials for {args.registry}" if registry.logout(args.registry)
          else f"Not logged in to {args.registry}")
    return 0


def commands() -> dict:
    return {"images": images, "image": image, "tag": tag, "rmi": rmi, "inspect": inspect,
            "history": history, "build": build, "container": container, "rm": rm,
            "diff": diff, "commit": commit, "logs": logs, "pull": pull, "push": push,
            "login": login, "logout": logout, **_archive_commands()}

