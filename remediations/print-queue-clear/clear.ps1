# print-queue-clear (Windows): detect jobs in error or older than the limit; remediate by
# stopping the Print Spooler, deleting spooled files, and starting it again.
$ErrorActionPreference = 'Stop'
$maxAge = if ($env:VIGIL_PARAM_MAX_JOB_AGE_MINUTES) { [int]$env:VIGIL_PARAM_MAX_JOB_AGE_MINUTES } else { 30 }
$phase = if ($env:VIGIL_PHASE) { $env:VIGIL_PHASE } else { 'remediate' }
$cutoff = (Get-Date).AddMinutes(-$maxAge)
$stuck = @(Get-Printer -ErrorAction SilentlyContinue | ForEach-Object {
    Get-PrintJob -PrinterName $_.Name -ErrorAction SilentlyContinue } |
    Where-Object { $_.JobStatus -match 'Error' -or $_.SubmittedTime -lt $cutoff })
if ($phase -in @('detect', 'verify')) {
    if ($stuck) { Write-Output "print-queue-clear: $($stuck.Count) stuck job(s)"; exit 1 }
    Write-Output 'print-queue-clear: no stuck job'; exit 0
}
if (-not $stuck) { Write-Output 'print-queue-clear: nothing stuck'; exit 0 }
if ($env:VIGIL_DRY_RUN -eq '1') { Write-Output "print-queue-clear: dry run: would clear $($stuck.Count) job(s)"; exit 0 }
$spool = Join-Path $env:SystemRoot 'System32\spool\PRINTERS'
Stop-Service -Name Spooler -Force
Get-ChildItem -LiteralPath $spool -File | Remove-Item -Force
Start-Service -Name Spooler
Write-Output "print-queue-clear: cleared $($stuck.Count) job(s); their owners must print again"
Write-Output 'vigil-outcome: needs_user'
exit 0
