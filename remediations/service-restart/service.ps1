# service-restart (Windows): detect a stopped service and restart it via the Service
# Control Manager. VIGIL_PHASE=detect|verify exits 1 when the service is not running;
# VIGIL_PHASE=remediate starts it and waits up to VIGIL_PARAM_START_TIMEOUT seconds.
# Exit status: 0 running / restarted, 1 not running / failed, 3 refused.

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$name = $env:VIGIL_PARAM_SERVICE
$phase = if ($env:VIGIL_PHASE) { $env:VIGIL_PHASE } else { 'remediate' }
$timeout = if ($env:VIGIL_PARAM_START_TIMEOUT) { [int]$env:VIGIL_PARAM_START_TIMEOUT } else { 10 }
if (-not $name -or $name -notmatch '^[A-Za-z0-9@._:+ -]+$') {
    [Console]::Error.WriteLine("service-restart: refusing: bad service name '$name'"); exit 3
}
$svc = Get-Service -Name $name -ErrorAction SilentlyContinue
if (-not $svc) { [Console]::Error.WriteLine("service-restart: refusing: no service '$name'"); exit 3 }

if ($phase -in @('detect', 'verify')) {
    if ($svc.Status -eq 'Running') { Write-Output "service-restart: $name is running"; exit 0 }
    Write-Output "service-restart: $name is $($svc.Status)"; exit 1
}
if ($svc.Status -eq 'Running') { Write-Output "service-restart: $name already running"; exit 0 }
if ($env:VIGIL_DRY_RUN -eq '1') { Write-Output "service-restart: dry run: would start $name"; exit 0 }
try {
    Start-Service -Name $name
    $svc.WaitForStatus('Running', [TimeSpan]::FromSeconds($timeout))
} catch {
    Write-Output "service-restart: $name did not start: $($_.Exception.Message)"; exit 1
}
Write-Output "service-restart: $name is running again"
exit 0
