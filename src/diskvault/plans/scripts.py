"""Generate a stand-alone script for a definition (bash or Python): pre steps, the backup, post
steps, mail on failure, and the exit code (0 success or warning, 1 failure) — for people who want
to read, edit or call the job from their own tooling instead of ``diskvault run``.

The script calls ``diskvault run --no-scripts --no-notify`` for the backup itself and
``diskvault notify`` for mail, so the definition's mail settings still apply.
"""

from __future__ import annotations

import shlex
import sys
import time

from diskvault.errors import UsageError
from diskvault.plans.definition import Definition
from diskvault.plans.systemd import checkout_root

SHELLS = ("bash", "python")


def _header(defn: Definition, comment: str) -> list[str]:
    return [f"{comment} diskvault backup script for definition {defn.name!r}",
            f"{comment} generated from {defn.path} on {time.strftime('%Y-%m-%d %H:%M')}.",
            f"{comment} Pre steps, the backup, post steps (always, told the result), mail; exit 0 success or",
            f"{comment} warning, 1 failure. Edit freely; generate it again when the definition's steps change."]


def bash_script(defn: Definition) -> str:
    q = shlex.quote
    lines = ["#!/usr/bin/env bash", *_header(defn, "#"), "set -u", "",
             f"DEFINITION={q(defn.path)}",
             f"DISKVAULT=({q(sys.executable)} -m diskvault)"]
    if checkout_root():
        lines.append(f"export PYTHONPATH={q(checkout_root())}${{PYTHONPATH:+:$PYTHONPATH}}")
    lines += [f"export DISKVAULT_DEFINITION={q(defn.name)} DISKVAULT_DEFINITION_FILE=\"$DEFINITION\"",
              "",
              "notify() {  # RESULT MESSAGE: mails when the definition wants this result",
              ("    \"${DISKVAULT[@]}\" notify \"$DEFINITION\" --result \"$1\" --message \"$2\" "
               "|| echo \"diskvault: could not send the $1 mail\" >&2"),
              "}",
              "",
              "result=success error= warning=",
              "", "# pre steps: the first that fails stops the backup"]
    for step in defn.pre:
        lines += [f"step={q(step.command)}",
                  "if [ -z \"$error\" ]; then",
                  f"    timeout {step.timeout} /bin/sh -c \"$step\" || error=\"pre step '$step' exited $?\"",
                  "fi"]
    lines += ["", "# the backup",
              "if [ -z \"$error\" ]; then",
              "    \"${DISKVAULT[@]}\" run \"$DEFINITION\" --no-scripts --no-notify \"$@\"",
              "    rc=$?",
              "    [ \"$rc\" -eq 0 ] || error=\"diskvault run exited $rc\"",
              "fi",
              "[ -z \"$error\" ] || result=failure",
              "export DISKVAULT_RESULT=\"$result\" DISKVAULT_ERROR=\"$error\"",
              "", "# post steps: always run; a failure is a warning"]
    for step in defn.post:
        lines += [f"step={q(step.command)}",
                  f"if ! timeout {step.timeout} /bin/sh -c \"$step\"; then",
                  "    warning=\"post step '$step' failed\"",
                  "    [ \"$result\" = success ] && result=warning",
                  "fi"]
    lines += ["",
              "case \"$result\" in",
              "    failure) notify failure \"$error\"; exit 1 ;;",
              "    warning) notify warning \"$warning\" ;;",
              "    success) notify success \"backup finished\" ;;",
              "esac",
              "exit 0"]
    return "\n".join(lines) + "\n"


def python_script(defn: Definition) -> str:
    env = {"DISKVAULT_DEFINITION": defn.name, "DISKVAULT_DEFINITION_FILE": defn.path}
    root = checkout_root()
    pre = [(s.command, s.timeout) for s in defn.pre]
    post = [(s.command, s.timeout) for s in defn.post]
    lines = [f"#!{sys.executable}", *_header(defn, "#"),
             "import os", "import subprocess", "import sys", "",
             f"DEFINITION = {defn.path!r}",
             f"DISKVAULT = [{sys.executable!r}, '-m', 'diskvault']",
             f"PRE = {pre!r}", f"POST = {post!r}",
             f"os.environ.update({env!r})"]
    if root:
        lines.append(f"os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [{root!r}, "
                     f"os.environ.get('PYTHONPATH')]))")
    lines += ["", "",
              "def step(command, timeout):",
              "    try:",
              "        return subprocess.run(['/bin/sh', '-c', command], timeout=timeout).returncode",
              "    except subprocess.TimeoutExpired:",
              "        return 124", "", "",
              "def notify(result, message):",
              "    \"\"\"Mails when the definition wants this result.\"\"\"",
              ("    if subprocess.run(DISKVAULT + ['notify', DEFINITION, '--result', result, '--message', message])"
               ".returncode:"),
              "        print(f'diskvault: could not send the {result} mail', file=sys.stderr)", "", "",
              "def main():",
              "    error = warning = ''",
              "    for command, timeout in PRE:",
              "        rc = step(command, timeout)",
              "        if rc:",
              "            error = f'pre step {command} exited {rc}'",
              "            break",
              "    if not error:",
              ("        rc = subprocess.run(DISKVAULT + ['run', DEFINITION, '--no-scripts', '--no-notify', "
               "*sys.argv[1:]]).returncode"),
              "        if rc:",
              "            error = f'diskvault run exited {rc}'",
              "    result = 'failure' if error else 'success'",
              "    os.environ.update(DISKVAULT_RESULT=result, DISKVAULT_ERROR=error)",
              "    for command, timeout in POST:",
              "        if step(command, timeout):",
              "            warning = f'post step {command} failed'",
              "            result = 'warning' if result == 'success' else result",
              "    notify(result, {'failure': error, 'warning': warning}.get(result, 'backup finished'))",
              "    return 1 if result == 'failure' else 0", "", "",
              "if __name__ == '__main__':",
              "    sys.exit(main())"]
    return "\n".join(lines) + "\n"


def generate(defn: Definition, shell: str) -> str:
    if shell not in SHELLS:
        raise UsageError(f"unknown shell {shell!r} (choose bash or python)")
    if not defn.path:
        raise UsageError("save the definition to a file first: the script runs that file")
    return bash_script(defn) if shell == "bash" else python_script(defn)
