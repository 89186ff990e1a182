# dns-flush (Windows): clear the DNS client cache. Exit 0 flushed, 1 failed.
$ErrorActionPreference = 'Stop'
if ($env:VIGIL_DRY_RUN -eq '1') { Write-Output 'dns-flush: dry run: would run Clear-DnsClientCache'; exit 0 }
try { Clear-DnsClientCache } catch { Write-Output "dns-flush: failed: $($_.Exception.Message)"; exit 1 }
Write-Output 'dns-flush: flushed the DNS client cache'
exit 0
