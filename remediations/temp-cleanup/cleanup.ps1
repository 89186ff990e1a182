# temp-cleanup (Windows): delete stale files from allow-listed temporary folders.
#
# Parameters (environment, set by the Vigil agent):
#   VIGIL_PARAM_DIRS             folders separated by ';' (default: the agent's TEMP folder)
#   VIGIL_PARAM_MIN_AGE_MINUTES  only files unmodified this long are deleted (default 10080)
#   VIGIL_DRY_RUN                "1": only list what would be deleted
#
# Safety: reparse points (symlinks, junctions) are never followed or deleted; only files
# are deleted; system folders are refused (exit 3) before anything is touched.
# Exit status: 0 done, 1 some files could not be deleted, 3 refused.

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

function Refuse([string]$why) {
    [Console]::Error.WriteLine("temp-cleanup: refusing: $why")
    exit 3
}

$dirs = if ($env:VIGIL_PARAM_DIRS -and $env:VIGIL_PARAM_DIRS -ne '/tmp:/var/tmp') {
    $env:VIGIL_PARAM_DIRS
} else { [System.IO.Path]::GetTempPath() }
$age = if ($env:VIGIL_PARAM_MIN_AGE_MINUTES) { $env:VIGIL_PARAM_MIN_AGE_MINUTES } else { '10080' }
$dryRun = $env:VIGIL_DRY_RUN -eq '1'
if ($age -notmatch '^[0-9]+$' -or [int64]$age -lt 1) { Refuse "min_age_minutes must be a whole number >= 1: $age" }
$cutoff = (Get-Date).AddMinutes(-[int64]$age)

$protected = @($env:SystemRoot, "$env:SystemDrive\", $env:ProgramFiles, ${env:ProgramFiles(x86)},
    "$env:SystemDrive\Users", $env:ProgramData) | Where-Object { $_ } |
    ForEach-Object { [System.IO.Path]::GetFullPath($_).TrimEnd('\') }

$roots = @()
foreach ($dir in $dirs.Split(';')) {
    if (-not $dir) { continue }
    if (-not [System.IO.Path]::IsPathRooted($dir)) { Refuse "not an absolute path: '$dir'" }
    $item = Get-Item -LiteralPath $dir -ErrorAction SilentlyContinue
    if (-not $item -or -not $item.PSIsContainer) { Refuse "not a folder: $dir" }
    if ($item.Attributes -band [IO.FileAttributes]::ReparsePoint) { Refuse "is a link: $dir" }
    $full = $item.FullName.TrimEnd('\')
    if ($protected -contains $full) { Refuse "will not clean a system folder: $dir" }
    $roots += $full
}
if (-not $roots) { Refuse 'no folders given' }

$count = 0; $bytes = 0; $failed = 0
function Walk([string]$folder) {
    foreach ($entry in [System.IO.Directory]::EnumerateFileSystemEntries($folder)) {
        $info = Get-Item -LiteralPath $entry -Force -ErrorAction SilentlyContinue
        if (-not $info) { continue }
        if ($info.Attributes -band [IO.FileAttributes]::ReparsePoint) { continue }  # never follow
        if ($info.PSIsContainer) { Walk $entry; continue }
        if ($info.LastWriteTime -ge $cutoff) { continue }
        if ($dryRun) { [Console]::Error.WriteLine("would remove $entry") }
        else {
            try { Remove-Item -LiteralPath $entry -Force; [Console]::Error.WriteLine("removed $entry") }
            catch { $script:failed++; continue }
        }
        $script:count++; $script:bytes += $info.Length
    }
}
foreach ($root in $roots) { try { Walk $root } catch { $failed++ } }

$what = if ($dryRun) { 'dry run: would remove' } else { 'removed' }
Write-Output "temp-cleanup: $what $count files, $bytes bytes (older than $age minutes)"
if ($failed) { exit 1 }
exit 0
