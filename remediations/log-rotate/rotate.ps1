# log-rotate (Windows): gzip oversized log files in one folder to NAME.1.gz (older ones
# shift up, at most VIGIL_PARAM_KEEP kept), then truncate the original in place.
# Reparse points (links) are skipped. Exit status: 0 done, 1 some failed, 3 refused.

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$dir = $env:VIGIL_PARAM_DIR
$pattern = if ($env:VIGIL_PARAM_PATTERN) { $env:VIGIL_PARAM_PATTERN } else { '*.log' }
$maxSize = if ($env:VIGIL_PARAM_MAX_SIZE) { [int64]$env:VIGIL_PARAM_MAX_SIZE } else { 104857600 }
$keep = if ($env:VIGIL_PARAM_KEEP) { [int]$env:VIGIL_PARAM_KEEP } else { 5 }
if (-not $dir -or -not [System.IO.Path]::IsPathRooted($dir) -or -not (Test-Path -LiteralPath $dir -PathType Container)) {
    [Console]::Error.WriteLine("log-rotate: refusing: not an absolute folder: '$dir'"); exit 3
}
if ($pattern -match '[\\/]' -or $keep -lt 1 -or $keep -gt 50) {
    [Console]::Error.WriteLine('log-rotate: refusing: bad pattern or keep'); exit 3
}
$status = 0
foreach ($f in Get-ChildItem -LiteralPath $dir -File -Filter $pattern) {
    if ($f.Attributes -band [IO.FileAttributes]::ReparsePoint) { continue }
    if ($f.Length -le $maxSize) { continue }
    if ($env:VIGIL_DRY_RUN -eq '1') { Write-Output "log-rotate: would rotate $($f.FullName)"; continue }
    try {
        $base = $f.FullName
        Remove-Item -LiteralPath "$base.$keep.gz" -ErrorAction SilentlyContinue
        for ($i = $keep; $i -gt 1; $i--) {
            if (Test-Path -LiteralPath "$base.$($i-1).gz") { Move-Item -LiteralPath "$base.$($i-1).gz" "$base.$i.gz" -Force }
        }
        $tmp = "$base.1.gz.tmp"
        $in = [IO.File]::Open($base, 'Open', 'Read', 'ReadWrite')
        $out = [IO.File]::Create($tmp)
        $gz = New-Object IO.Compression.GZipStream($out, [IO.Compression.CompressionMode]::Compress)
        $in.CopyTo($gz); $gz.Dispose(); $out.Dispose(); $in.Dispose()
        Move-Item -LiteralPath $tmp "$base.1.gz" -Force
        $w = [IO.File]::Open($base, 'Open', 'Write', 'ReadWrite'); $w.SetLength(0); $w.Dispose()
        Write-Output "log-rotate: rotated $base"
    } catch { $status = 1; [Console]::Error.WriteLine("log-rotate: could not rotate $($f.FullName): $_") }
}
exit $status
