# app-memory-restart (Windows): stop processes named VIGIL_PARAM_NAME whose working set
# exceeds VIGIL_PARAM_MAX_RSS bytes (CloseMainWindow, then Stop-Process -Force after the
# grace period) and start VIGIL_PARAM_RESTART again, or declare needs_user.
# Exit status: 0 done, 1 failed, 3 refused.

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$name = $env:VIGIL_PARAM_NAME
$maxRss = if ($env:VIGIL_PARAM_MAX_RSS) { [int64]$env:VIGIL_PARAM_MAX_RSS } else { 2147483648 }
$grace = if ($env:VIGIL_PARAM_GRACE) { [int]$env:VIGIL_PARAM_GRACE } else { 15 }
$restart = $env:VIGIL_PARAM_RESTART
if (-not $name -or $name -match '[\\/]') { [Console]::Error.WriteLine('app-memory-restart: refusing: bad name'); exit 3 }
if ($restart -and -not (Test-Path -LiteralPath $restart -PathType Leaf)) {
    [Console]::Error.WriteLine("app-memory-restart: refusing: no such program $restart"); exit 3
}
$over = @(Get-Process -Name $name -ErrorAction SilentlyContinue | Where-Object { $_.WorkingSet64 -gt $maxRss })
if (-not $over) { Write-Output "app-memory-restart: no $name process above $maxRss bytes"; exit 0 }
foreach ($p in $over) { Write-Output "app-memory-restart: $($p.Id) uses $($p.WorkingSet64) bytes" }
if ($env:VIGIL_DRY_RUN -eq '1') { Write-Output 'app-memory-restart: dry run: nothing stopped'; exit 0 }
foreach ($p in $over) { [void]$p.CloseMainWindow() }
$deadline = (Get-Date).AddSeconds($grace)
while ((Get-Date) -lt $deadline -and ($over | Where-Object { -not $_.HasExited })) { Start-Sleep -Milliseconds 100 }
foreach ($p in $over | Where-Object { -not $_.HasExited }) { Stop-Process -Id $p.Id -Force -ErrorAction SilentlyContinue }
Start-Sleep -Milliseconds 500
if ($over | Where-Object { -not $_.HasExited }) { Write-Output 'app-memory-restart: could not stop it'; exit 1 }
if (-not $restart) {
    Write-Output "app-memory-restart: stopped $name; the user must start it again"
    Write-Output 'vigil-outcome: needs_user'
    exit 0
}
Start-Process -FilePath $restart
Write-Output "app-memory-restart: restarted $name"
exit 0
