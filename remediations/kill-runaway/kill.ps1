# kill-runaway (Windows): stop allow-listed processes using too much CPU, gracefully
# (CloseMainWindow) then forcibly (Stop-Process -Force) after VIGIL_PARAM_GRACE seconds.
# CPU percent is measured over one second from the processes' CPU time.
# Exit status: 0 done / nothing matched, 1 some survived, 3 refused.

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$names = @(($env:VIGIL_PARAM_NAMES -as [string]).Split(',') | Where-Object { $_ })
$minCpu = if ($env:VIGIL_PARAM_MIN_CPU_PERCENT) { [double]$env:VIGIL_PARAM_MIN_CPU_PERCENT } else { 90 }
$grace = if ($env:VIGIL_PARAM_GRACE) { [int]$env:VIGIL_PARAM_GRACE } else { 10 }
if (-not $names) { [Console]::Error.WriteLine('kill-runaway: refusing: no allow-list'); exit 3 }

# Names on Windows come without ".exe"; match them exactly, case-insensitively.
$first = @{}
foreach ($p in Get-Process -ErrorAction SilentlyContinue | Where-Object { $names -contains $_.ProcessName }) {
    $first[$p.Id] = $p.TotalProcessorTime.TotalSeconds
}
Start-Sleep -Seconds 1
$hot = @()
foreach ($id in $first.Keys) {
    $p = Get-Process -Id $id -ErrorAction SilentlyContinue
    if (-not $p -or $id -eq $PID) { continue }
    $cpu = ($p.TotalProcessorTime.TotalSeconds - $first[$id]) * 100
    if ($cpu -ge $minCpu) { $hot += $p; Write-Output ("kill-runaway: {0} {1} ({2:N0}% CPU)" -f $id, $p.ProcessName, $cpu) }
}
if (-not $hot) { Write-Output 'kill-runaway: no allow-listed process above the limit'; exit 0 }
if ($env:VIGIL_DRY_RUN -eq '1') { Write-Output 'kill-runaway: dry run: nothing stopped'; exit 0 }
foreach ($p in $hot) { [void]$p.CloseMainWindow() }
$deadline = (Get-Date).AddSeconds($grace)
while ((Get-Date) -lt $deadline -and ($hot | Where-Object { -not $_.HasExited })) { Start-Sleep -Milliseconds 100 }
foreach ($p in $hot | Where-Object { -not $_.HasExited }) { Stop-Process -Id $p.Id -Force -ErrorAction SilentlyContinue }
Start-Sleep -Milliseconds 500
if ($hot | Where-Object { -not $_.HasExited }) { Write-Output 'kill-runaway: some processes survived'; exit 1 }
Write-Output "kill-runaway: stopped $($hot.Count) process(es)"
exit 0
