"""`nsmagic build`: a Dockerfile into an image, one instruction at a time.

Every instruction turns the current image (a manifest in the store) into the next one:
- RUN runs in an nsmagic container on the current image's layers; its writable layer is
  copied into the store when it exits (RootPlan.keep_dir, inside/keep.py), and what it
  wrote becomes the next layer, its deletions whiteouts (layerdiff.py); a RUN that wrote
  nothing makes no layer;
- COPY and ADD make a layer from the build context directly, with no container;
- ENV, ARG, WORKDIR, USER, LABEL, EXPOSE, CMD, ENTRYPOINT change only the config: no layer.

A cache maps (the current image, the instruction as expanded, and for COPY/ADD the content
of what it reads) to the image it made, in the store's cache/ directory: a rebuild of an
unchanged Dockerfile runs no container and writes no layer."""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import os
import stat
import tarfile
from dataclasses import dataclass, field

from ..errors import NsmagicError
from . import compose, layerdiff, reference, unpack
from . import store as st
from .dockerfile import DockerfileError, Instruction, expand, pairs, parse


@dataclass
class Options:
    name: str | None                       # -t NAME
    context: str                           # the build context directory
    build_args: dict[str, str] = field(default_factory=dict)
    network: str = "none"
    no_cache: bool = False


@dataclass
class _State:
    image: st.Image | None                 # None: FROM scratch, before any layer
    args: dict[str, str] = field(default_factory=dict)   # ARGs in scope, with values

    @property
    def digest(self) -> str:
        return self.image.manifest_digest if self.image else "scratch"

    @property
    def runtime(self) -> dict:
        return copy.deepcopy(self.image.runtime) if self.image else {}

    def env(self) -> dict[str, str]:
        return dict(e.partition("=")[::2] for e in self.runtime.get("Env") or [])

    def variables(self) -> dict[str, str]:
        return {**self.args, **self.env()}   # ENV wins over ARG, as in Docker


class Builder:
    def __init__(self, options: Options, store: st.Store | None = None, out=None, err=None,
                 say=print):
        self.options = options
        self.store = (store or st.Store()).ensure()
        self.out, self.err, self.say = out, err, say
        self.global_args: dict[str, str] = {}
        self.used_args: set[str] = set()
        self.containers = 0                # how many RUNs had to run (0 on a full cache hit)

    def build(self, dockerfile: str, name: str = "Dockerfile") -> st.Image:
        steps = parse(dockerfile, name)
        state = None
        for number, ins in enumerate(steps, 1):
            self.say(f"Step {number}/{len(steps)} : {ins.source}")
            try:
                state = self._step(ins, state)
            except NsmagicError as err:
                raise DockerfileError(f"{name} line {ins.line} ({ins.keyword}): {err}") from None
            if state is not None and state.image is not None:
                self.say(f" ---> {reference.short_id(state.image.id)}")
        if state is None or state.image is None:
            raise DockerfileError(f"{name} makes no image (FROM scratch with nothing after "
                                  "it has no config to save).")
        unused = set(self.options.build_args) - self.used_args
        if unused:
            self.say(f"[Warning] build argument(s) not declared by any ARG: "
                     f"{', '.join(sorted(unused))}")
        return self._finish(state.image)

    def _finish(self, image: st.Image) -> st.Image:
        self.say(f"Successfully built {reference.short_id(image.id)}")
        desc = st.Descriptor(st.MANIFEST, image.manifest_digest,
                             len(self.store.read_blob(image.manifest_digest)))
        if self.options.name:
            self.store.tag(self.options.name, desc)
            self.say(f"Successfully tagged {reference.parse(self.options.name).name}")
        else:
            self.store.add_unnamed(desc)
        return self.store.image(image.manifest_digest, (self.options.name,)
                                if self.options.name else ())

    # --- one instruction

    def _step(self, ins: Instruction, state: _State | None) -> _State | None:
        if ins.keyword == "ARG":
            return self._arg(ins, state)
        if ins.keyword == "FROM":
            return self._from(ins, state)
        if state is None:
            raise DockerfileError(f"{ins.keyword} before FROM.")
        if ins.keyword == "MAINTAINER":
            return state     # deprecated; Docker keeps it as the Author field only
        extra = ""
        if ins.keyword in ("COPY", "ADD"):
            layer_source = _Sources(self, ins, state)
            extra = layer_source.fingerprint()
        key = self._key(state, ins, extra)
        cached = None if self.options.no_cache else self._cached(key)
        if cached is not None:
            self.say(" ---> Using cache")
            return _State(cached, state.args)
        if ins.keyword == "RUN":
            image = self._run(ins, state)
        elif ins.keyword in ("COPY", "ADD"):
            image = self._commit(state, ins, layer_source.layer())
        else:
            image = self._configure(ins, state)
        self._remember(key, image)
        return _State(image, state.args)

    def _arg(self, ins: Instruction, state: _State | None) -> _State | None:
        name, sep, default = ins.text.partition("=")
        name = name.strip()
        if not name or " " in name:
            raise DockerfileError(f"ARG {ins.text!r} is not NAME[=default].")
        scope = self.global_args if state is None else state.args
        variables = {**self.global_args, **(state.variables() if state else {})}
        if name in self.options.build_args:
            value = self.options.build_args[name]
            self.used_args.add(name)
        elif sep:
            value = expand(default, variables)
        else:
            value = self.global_args.get(name, "")
        scope[name] = value
        if state is None:
            return None
        return self._config_step(state, ins, lambda rt: None, key_extra=f"{name}={value}")

    def _from(self, ins: Instruction, state: _State | None) -> _State:
        if state is not None:
            raise DockerfileError("a second FROM (a multi-stage build) is "
                                  "not supported by nsmagic build.")
        words = expand(ins.text, self.global_args).split()
        if len(words) == 3 and words[1].lower() == "as":
            words = words[:1]
        if len(words) != 1:
            raise DockerfileError(f"FROM takes one image name, not "
                                  f"{ins.text!r}.")
        if words[0] == "scratch":
            return _State(None)
        from . import catalog
        return _State(catalog.find(words[0], self.store))

    # --- the cache

    def _key(self, state: _State, ins: Instruction, extra: str) -> str:
        text = expand(ins.text, state.variables()) if ins.keyword != "RUN" else ins.text
        args = json.dumps(sorted(state.args.items())) if ins.keyword == "RUN" else ""
        h = hashlib.sha256(f"{state.digest}\n{ins.keyword} {text}\n{args}\n{extra}".encode())
        return h.hexdigest()

    def _cached(self, key: str) -> st.Image | None:
        try:
            with open(self.store.path("cache", key)) as f:
                digest = f.read().strip()
            return self.store.image(digest)
        except (OSError, NsmagicError, ValueError, KeyError):
            return None

    def _remember(self, key: str, image: st.Image) -> None:
        os.makedirs(self.store.path("cache"), mode=0o700, exist_ok=True)
        tmp = self.store.path("cache", f"{key}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(image.manifest_digest)
        os.replace(tmp, self.store.path("cache", key))

    # --- steps that make a new image

    def _commit(self, state: _State, ins: Instruction, layer: compose.NewLayer | None,
                runtime: dict | None = None) -> st.Image:
        entry = {"created": compose.now(), "created_by": ins.source}
        if layer is None:
            entry["empty_layer"] = True
        return compose.write_image(self.store, None, [layer] if layer else [],
                                   runtime if runtime is not None else state.runtime,
                                   base_image=state.image, history=[entry],
                                   created=entry["created"])

    def _config_step(self, state: _State, ins: Instruction, change, key_extra: str = ""):
        key = self._key(state, ins, key_extra)
        cached = None if self.options.no_cache else self._cached(key)
        if cached is not None:
            self.say(" ---> Using cache")
            return _State(cached, state.args)
        runtime = state.runtime
        change(runtime)
        image = self._commit(state, ins, None, runtime)
        self._remember(key, image)
        return _State(image, state.args)

    def _configure(self, ins: Instruction, state: _State) -> st.Image:
        runtime = state.runtime
        CONFIGURE[ins.keyword](ins, runtime, state.variables())
        return self._commit(state, ins, None, runtime)

    def _run(self, ins: Instruction, state: _State) -> st.Image:
        if state.image is None:
            raise DockerfileError("RUN on scratch has nothing to run; "
                                  "start FROM an image with a shell, such as busybox.")
        from .. import core
        from ..spec import Spec
        stage = self.store.staging("run-")
        try:
            env = state.env()
            spec = Spec(command=tuple(ins.command()), image=state.image.manifest_digest,
                        store=self.store.root,
                        entrypoint="", network=self.options.network, keep_dir=stage,
                        env=tuple((k, v) for k, v in state.args.items() if k not in env))
            self.say(" ---> Running in a container")
            self.containers += 1
            result = core.run(spec, out=self.out, err=self.err)
            if result.exit_code != 0:
                raise DockerfileError(f"RUN exited with {result.exit_code}"
                                      f"{': ' + result.error if result.error else ''}.")
            upper = os.path.join(stage, "upper")
            if not os.path.isdir(upper):
                why = f": {result.error}" if result.error else ""
                raise DockerfileError(f"the RUN container's writable layer was not kept (it "
                                      f"was stopped{why}).")
            layer = self._layer_of(upper, ins.source)
        finally:
            st.remove(stage)
        return self._commit(state, ins, layer)

    def _layer_of(self, upper: str, created_by: str) -> compose.NewLayer | None:
        if layerdiff.is_empty(upper):
            return None
        tmp = os.path.join(self.store.staging("tar-"), "layer.tar")
        try:
            with open(tmp, "wb") as out:
                layerdiff.write_tar(upper, out)
            with open(tmp, "rb") as f:
                blob = self.store.put_stream(f, st.LAYER)
        finally:
            st.remove(os.path.dirname(tmp))
        return compose.NewLayer(blob, blob.digest, created_by, compose.now())


# --- config-only instructions: (instruction, runtime config to change, variables)


def _env(ins, rt, variables):
    env = dict(e.partition("=")[::2] for e in rt.get("Env") or [])
    for key, value in pairs(ins.text):
        env[key] = expand(value, {**variables, **env})
    rt["Env"] = [f"{k}={v}" for k, v in env.items()]


def _label(ins, rt, variables):
    labels = rt.setdefault("Labels", {})
    for key, value in pairs(ins.text, legacy=False):
        labels[expand(key, variables)] = expand(value, variables)


def _expose(ins, rt, variables):
    ports = rt.setdefault("ExposedPorts", {})
    for port in expand(ins.text, variables).split():
        ports[port if "/" in port else f"{port}/tcp"] = {}


def _workdir(ins, rt, variables):
    path = expand(ins.text, variables)
    rt["WorkingDir"] = os.path.normpath(os.path.join(rt.get("WorkingDir") or "/", path))


def _user(ins, rt, variables):
    rt["User"] = expand(ins.text, variables)


def _cmd(ins, rt, variables):
    rt["Cmd"] = ins.command()


def _entrypoint(ins, rt, variables):
    rt["Entrypoint"] = ins.command()
    rt.pop("Cmd", None)   # Docker: a new ENTRYPOINT drops the base image's CMD


CONFIGURE = {"ENV": _env, "LABEL": _label, "EXPOSE": _expose, "WORKDIR": _workdir,
             "USER": _user, "CMD": _cmd, "ENTRYPOINT": _entrypoint}


# --- COPY and ADD: a layer from the build context


class _Sources:
    """What a COPY or ADD reads from the context, and the layer it makes."""

    def __init__(self, builder: Builder, ins: Instruction, state: _State):
        self.ins, self.context = ins, os.path.realpath(builder.options.context)
        self.store = builder.store
        words = ins.exec_form() or ins.text.split()
        self.owner = (0, 0)
        while words and words[0].startswith("--"):
            flag = words.pop(0)
            if flag.startswith("--chown="):
                self.owner = _owner(flag[len("--chown="):])
            else:
                raise DockerfileError(f"{ins.keyword} {flag.split('=')[0]} "
                                      "is not supported by nsmagic build.")
        if len(words) < 2:
            raise DockerfileError(f"{ins.keyword} needs a source and a "
                                  "destination.")
        variables = state.variables()
        *sources, dest = [expand(w, variables) for w in words]
        workdir = state.runtime.get("WorkingDir") or "/"
        self.dest = os.path.normpath(os.path.join(workdir, dest))
        self.into_dir = dest.endswith("/") or len(sources) > 1
        self.paths = [p for s in sources for p in self._matches(s)]
        if len(self.paths) > 1 or any(os.path.isdir(p) and not os.path.islink(p)
                                      for p in self.paths):
            self.into_dir = self.into_dir or len(self.paths) > 1

    def _matches(self, source: str) -> list[str]:
        if "://" in source:
            raise DockerfileError(f"{self.ins.keyword} of a URL is not "
                                  "supported (nsmagic build has no network); download it "
                                  "and COPY the file.")
        pattern = os.path.normpath(os.path.join(self.context, source.lstrip("/")))
        if os.path.commonpath([pattern, self.context]) != self.context:
            raise DockerfileError(f"{source!r} is outside the build "
                                  f"context {self.context}.")
        found = sorted(glob.glob(pattern)) if glob.has_magic(source) else (
            [pattern] if os.path.lexists(pattern) else [])
        if not found:
            raise DockerfileError(f"{source!r} is not in the build "
                                  f"context {self.context}.")
        for path in found:   # a link on the way may lead anywhere on the host: not taken
            parent = os.path.dirname(path)
            if os.path.realpath(parent) != parent:
                raise DockerfileError(f"{source!r} goes through a symbolic link in the build "
                                      f"context ({os.path.relpath(parent, self.context)}): "
                                      "COPY and ADD read only the context's own files; name "
                                      "the files where they are.")
        return found

    def _entries(self):
        """(path in the image, host path, lstat) for everything copied, parents first."""
        for path in self.paths:
            st_ = os.lstat(path)
            if stat.S_ISDIR(st_.st_mode):
                target = (os.path.join(self.dest, os.path.basename(path))
                          if self.into_dir and len(self.paths) > 1 else self.dest)
                yield target, path, st_
                for dirpath, dirnames, filenames in os.walk(path):
                    dirnames.sort()
                    for name in sorted(dirnames + filenames):
                        host = os.path.join(dirpath, name)
                        rel = os.path.relpath(host, path)
                        yield os.path.join(target, rel), host, os.lstat(host)
            else:
                target = (os.path.join(self.dest, os.path.basename(path)) if self.into_dir
                          else self.dest)
                yield target, path, st_

    def fingerprint(self) -> str:
        """The content read (paths, types, modes, bytes, link targets; not times)."""
        h = hashlib.sha256(repr(self.owner).encode())
        for target, host, st_ in self._entries():
            h.update(f"{target}\0{stat.S_IFMT(st_.st_mode)}\0{stat.S_IMODE(st_.st_mode)}\0"
                     .encode())
            if stat.S_ISREG(st_.st_mode):
                h.update(layerdiff.digest_of(host).encode())
            elif stat.S_ISLNK(st_.st_mode):
                h.update(os.readlink(host).encode())
        return h.hexdigest()

    def layer(self) -> compose.NewLayer:
        stage = self.store.staging("copy-")
        try:
            path = os.path.join(stage, "layer.tar")
            with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
                for target, host, st_ in self._entries():
                    if self.ins.keyword == "ADD" and stat.S_ISREG(st_.st_mode) \
                            and tarfile.is_tarfile(host):
                        self._extract_into(tar, host)
                    else:
                        self._add(tar, target, host, st_)
            with open(path, "rb") as f:
                blob = self.store.put_stream(f, st.LAYER)
        finally:
            st.remove(stage)
        return compose.NewLayer(blob, blob.digest, self.ins.source, compose.now())

    def _add(self, tar, target: str, host: str, st_: os.stat_result) -> None:
        if not (stat.S_ISREG(st_.st_mode) or stat.S_ISDIR(st_.st_mode)
                or stat.S_ISLNK(st_.st_mode)):
            return   # a socket or device in the context is nothing to copy
        info = tar.gettarinfo(host, arcname=target.lstrip("/"))
        info.uid, info.gid = self.owner
        info.uname = info.gname = ""
        if info.isreg():
            with os.fdopen(os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC),
                           "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)

    def _extract_into(self, tar, archive: str) -> None:
        """ADD's local archive: its members under the destination (names checked as the unpacker
        checks them; the layer is unpacked by the hardened unpacker in any case)."""
        report, what = unpack.Report(), f"the archive {os.path.basename(archive)}"
        with unpack.open_tar(name=archive) as src:
            for member in src:
                rel = unpack.clean_name(member.name, report, what)
                if not rel:
                    continue
                member.name = os.path.join(self.dest, rel).lstrip("/")
                if member.islnk():
                    member.linkname = os.path.join(
                        self.dest, unpack.clean_name(member.linkname, report, what)).lstrip("/")
                data = src.extractfile(member) if member.isreg() else None
                tar.addfile(member, data)


def _owner(text: str) -> tuple[int, int]:
    user, _, group = text.partition(":")
    if not user.isdigit() or (group and not group.isdigit()):
        raise DockerfileError(f"--chown={text}: nsmagic build takes numeric ids here "
                              "(UID[:GID]).")
    return int(user), int(group or user)

