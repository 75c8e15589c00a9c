# Install the LLMTune Companion for this user and start it at login (Windows).
#
#   powershell -ExecutionPolicy Bypass -File install.ps1 [-NoTray] [-Method uv|pipx|venv] [SOURCE]
#   powershell -ExecutionPolicy Bypass -File install.ps1 -Uninstall [-Purge [-Yes]]
#
# SOURCE is what pip installs: the package name (the default), a local checkout or a wheel.
# The package goes into an environment of its own: `uv tool` or `pipx` when one is installed,
# otherwise a virtual environment under %LOCALAPPDATA%.
param(
    [Parameter(Position = 0)] [string] $Source = "llmtune-companion",
    [switch] $Uninstall,
    [switch] $Purge,
    [switch] $Yes,
    [switch] $NoTray,
    [ValidateSet("uv", "pipx", "venv")] [string] $Method = ""
)
$ErrorActionPreference = "Stop"

$Package = "llmtune-companion"
$Venv = Join-Path $env:LOCALAPPDATA "llmtune-companion-venv"

function Test-Command([string] $Name) {
    return [bool] (Get-Command $Name -ErrorAction SilentlyContinue)
}

function Invoke-Checked([string] $Exe, [string[]] $Arguments) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "$Exe $($Arguments -join ' ') failed ($LASTEXITCODE)" }
}

function Find-Companion {
    $candidates = @((Join-Path $Venv "Scripts\llmtune-companion.exe"))
    if (Test-Command "uv") { $candidates += (Join-Path (& uv tool dir --bin) "llmtune-companion.exe") }
    foreach ($candidate in $candidates) { if (Test-Path $candidate) { return $candidate } }
    $found = Get-Command "llmtune-companion" -ErrorAction SilentlyContinue
    if ($found) { return $found.Source }
    return $null
}

if ($Uninstall) {
    $companion = Find-Companion
    if (-not $companion) { throw "llmtune-companion is not installed" }
    $arguments = @("service", "uninstall")
    if ($Purge) { $arguments += "--purge" }
    if ($Purge -and $Yes) { $arguments += "--yes" }
    Invoke-Checked $companion $arguments
    if (Test-Path $Venv) {
        Remove-Item -Recurse -Force $Venv
    } elseif ((Test-Command "uv") -and ((& uv tool list) -match "^$Package ")) {
        Invoke-Checked "uv" @("tool", "uninstall", $Package)
    } elseif ((Test-Command "pipx") -and ((& pipx list --short) -match "^$Package ")) {
        Invoke-Checked "pipx" @("uninstall", $Package)
    }
    Write-Output "LLMTune Companion removed."
    exit 0
}

if (-not $Method) {
    if (Test-Command "uv") { $Method = "uv" } elseif (Test-Command "pipx") { $Method = "pipx" } else { $Method = "venv" }
}
# A local directory or wheel is installed by absolute path.
if (Test-Path $Source) { $Source = (Resolve-Path $Source).Path }

Write-Output "Installing $Source with $Method ..."
switch ($Method) {
    "uv" {
        Invoke-Checked "uv" @("tool", "install", "--force", $Source)
        $companion = Join-Path (& uv tool dir --bin) "llmtune-companion.exe"
    }
    "pipx" {
        Invoke-Checked "pipx" @("install", "--force", $Source)
        $companion = (Get-Command "llmtune-companion").Source
    }
    "venv" {
        if (Test-Command "py") { $python = @("py", "-3") } elseif (Test-Command "python") { $python = @("python") }
        else { throw "Python 3.11 or newer is needed (https://www.python.org/downloads/)" }
        $pyArgs = @()
        if ($python.Length -gt 1) { $pyArgs = $python[1..($python.Length - 1)] }
        if (-not (Test-Path (Join-Path $Venv "Scripts\python.exe"))) {
            Invoke-Checked $python[0] ($pyArgs + @("-m", "venv", $Venv))
        }
        Invoke-Checked (Join-Path $Venv "Scripts\python.exe") @("-m", "pip", "install", "--quiet", "--upgrade", $Source)
        $companion = Join-Path $Venv "Scripts\llmtune-companion.exe"
    }
}
if (-not (Test-Path $companion)) { throw "the install did not produce $companion" }

$arguments = @("service", "install")
if ($NoTray) { $arguments += "--no-tray" }
$output = & $companion @arguments
$output | Write-Output
if ($LASTEXITCODE -ne 0) { throw "service install failed" }
$url = ($output | Select-String -Pattern "^the companion runs at (\S+)" | Select-Object -First 1)
$baseUrl = if ($url) { $url.Matches[0].Groups[1].Value } else { "http://127.0.0.1:8742/v1" }

Write-Output ""
Write-Output "LLMTune Companion is installed and running."
Write-Output "  base URL:  $baseUrl"
Write-Output "  command:   $companion"
Write-Output "  API key:   run ``llmtune-companion token`` (a local token for your IDE, not your LLMTune key)"
Write-Output "  next step: llmtune-companion connect continue"
Write-Output "Remove it with: powershell -ExecutionPolicy Bypass -File install.ps1 -Uninstall"
