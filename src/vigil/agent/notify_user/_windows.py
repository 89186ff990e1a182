"""Windows: a toast through PowerShell and the WinRT notification API.

The script is fixed and passed with ``-EncodedCommand``; the title, body and URL reach it
as environment variables and are put into the toast's XML as text nodes, so neither
PowerShell nor XML ever parses them.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Mapping

from vigil.agent.notify_user._common import Notification

_SCRIPT = r"""
$ErrorActionPreference = 'Stop'
[Windows.UI.Notifications.ToastNotificationManager, Windows.UI.Notifications, ContentType = WindowsRuntime] > $null
[Windows.Data.Xml.Dom.XmlDocument, Windows.Data.Xml.Dom.XmlDocument, ContentType = WindowsRuntime] > $null
$xml = New-Object Windows.Data.Xml.Dom.XmlDocument
$xml.LoadXml('<toast activationType="protocol"><visual><binding template="ToastGeneric">' +
    '<text/><text/></binding></visual></toast>')
$texts = $xml.GetElementsByTagName('text')
$texts.Item(0).AppendChild($xml.CreateTextNode($env:VIGIL_NOTE_TITLE)) > $null
$texts.Item(1).AppendChild($xml.CreateTextNode($env:VIGIL_NOTE_BODY)) > $null
$xml.DocumentElement.SetAttribute('launch', $env:VIGIL_NOTE_URL)
$toast = [Windows.UI.Notifications.ToastNotification]::new($xml)
$app = '{1AC14E77-02E7-4E5D-B744-2EB1AE5198B7}\WindowsPowerShell\v1.0\powershell.exe'
[Windows.UI.Notifications.ToastNotificationManager]::CreateToastNotifier($app).Show($toast)
"""  # noqa: E501 - PowerShell type literals cannot be split


def unavailable() -> str | None:
    return None if shutil.which("powershell") else "powershell not found"


def argv(note: Notification) -> list[str]:
    encoded = base64.b64encode(_SCRIPT.encode("utf-16-le")).decode()
    return ["powershell", "-NoProfile", "-NonInteractive", "-EncodedCommand", encoded]


def env(note: Notification) -> Mapping[str, str]:
    return {"VIGIL_NOTE_TITLE": note.title, "VIGIL_NOTE_BODY": note.body,
            "VIGIL_NOTE_URL": note.url}  # fmt: skip
