"""Email after a run: a subject that says the result and a plain-text summary, through SMTP
(plain, STARTTLS or SSL; login when a user is set). Which results mail is the definition's ``on``."""

from __future__ import annotations

import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from diskvault.crypto.keys import password_source
from diskvault.errors import DiskvaultError
from diskvault.plans.definition import Definition, Email
from diskvault.plans.history import RunRecord
from diskvault.plans.retention import iso
from diskvault.units import human_size

TIMEOUT = 30


class NotifyError(DiskvaultError):
    """cannot send mail to {}: {}"""


def summary(defn: Definition, run: RunRecord) -> str:
    lines = [f"Backup definition: {defn.name} ({defn.path or defn.id})",
             f"Result:            {run.result.upper()}",
             f"Type:              {run.type or '-'}" + (f" ({run.type_reason})" if run.type_reason else ""),
             f"Source:            {run.source or '-'}",
             f"Destination:       {run.destination or defn.destination}",
             f"Started:           {iso(run.started_ns)}",
             f"Ended:             {iso(run.ended_ns) if run.ended_ns else '-'}"]
    if run.ended_ns:
        lines.append(f"Duration:          {(run.ended_ns - run.started_ns) / 1e9:.1f} s")
    if run.bytes_read is not None:
        lines.append(f"Read / written:    {human_size(run.bytes_read)} / {human_size(run.bytes_written or 0)}")
    if run.error:
        lines += ["", f"Error: {run.error}"]
    if run.notes:
        lines += ["", "Notes:"] + [f"  - {n}" for n in run.notes]
    if run.files:
        lines += ["", "Files written:"] + [f"  {f}" for f in run.files]
    if run.deleted:
        lines += ["", "Files deleted (retention, merge):"] + [f"  {f}" for f in run.deleted]
    lines += ["", f"Host: {socket.gethostname()}"]
    return "\n".join(lines) + "\n"


def message(defn: Definition, run: RunRecord, email: Email) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = f"[diskvault] {run.result.upper()}: {defn.name} on {socket.gethostname()}"
    msg["From"], msg["To"] = email.sender, email.to
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=socket.gethostname() or "localhost")
    msg["X-Diskvault-Result"] = run.result
    msg.set_content(summary(defn, run))
    return msg


def send(email: Email, msg: EmailMessage) -> None:
    try:
        if email.security == "ssl":
            smtp = smtplib.SMTP_SSL(email.host, email.port, timeout=TIMEOUT, context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(email.host, email.port, timeout=TIMEOUT)
        with smtp:
            if email.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if email.user:
                smtp.login(email.user, password_source(email.password_file or None, email.password_env or None)())
            smtp.send_message(msg, to_addrs=[a.strip() for a in email.to.split(",") if a.strip()])
    except (OSError, smtplib.SMTPException) as e:
        raise NotifyError(email.to, e) from None


def notify(defn: Definition, run: RunRecord) -> list[str]:
    """Mail every address that wants this result; returns the problems (a failed mail never fails
    the backup, but it is reported)."""
    problems = []
    for email in defn.emails:
        if run.result not in email.on:
            continue
        try:
            send(email, message(defn, run, email))
        except DiskvaultError as e:
            problems.append(str(e))
    return problems
