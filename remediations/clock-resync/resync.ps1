# clock-resync (Windows): VIGIL_PHASE=detect|verify exits 1 when the offset reported by
# "w32tm /stripchart" exceeds VIGIL_PARAM_MAX_OFFSET_MS, 2 when unknown; remediate runs
# "w32tm /resync /force" against the configured time source.
$ErrorActionPreference = 'Stop'
$maxMs = if ($env:VIGIL_PARAM_MAX_OFFSET_MS) { [double]$env:VIGIL_PARAM_MAX_OFFSET_MS } else { 1000 }
$phase = if ($env:VIGIL_PHASE) { $env:VIGIL_PHASE } else { 'remediate' }
if ($phase -in @('detect', 'verify')) {
    $source = (& w32tm /query /source 2>$null | Select-Object -First 1).Trim() -replace ',.*$', ''
    $line = & w32tm /stripchart /computer:$source /samples:1 /dataonly 2>$null | Select-String -Pattern '([-+][0-9.]+)s' | Select-Object -Last 1
    if (-not $line) { Write-Output 'clock-resync: offset unknown'; exit 2 }
    $ms = [math]::Abs([double]$line.Matches[0].Groups[1].Value) * 1000
    Write-Output "clock-resync: clock is off by $([int]$ms) ms (limit $maxMs ms)"
    if ($ms -gt $maxMs) { exit 1 } else { exit 0 }
}
if ($env:VIGIL_DRY_RUN -eq '1') { Write-Output 'clock-resync: dry run: would run w32tm /resync /force'; exit 0 }
& w32tm /resync /force
if ($LASTEXITCODE -ne 0) { Write-Output 'clock-resync: w32tm /resync failed'; exit 1 }
Write-Output 'clock-resync: clock resynchronised'
exit 0
