// swift-tools-version:5.9
// engram for iOS and macOS: the uniffi Swift binding (engram.swift) over engramFFI, an
// XCFramework of libengram_uniffi.a for aarch64-apple-ios, aarch64-apple-ios-sim and
// aarch64-apple-darwin. engramFFI.xcframework is built on a Mac next to this file and is not
// committed: see "Swift package" in bindings/README.md. Not built on Linux CI (no Swift
// toolchain there).
import PackageDescription

let package = Package(
    name: "engram",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "engram", targets: ["engram"]),
    ],
    targets: [
        // The Rust library with engramFFI.h and its module map (module engramFFI).
        .binaryTarget(name: "engramFFI", path: "engramFFI.xcframework"),
        .target(
            name: "engram",
            dependencies: ["engramFFI"],
            path: ".",
            exclude: [
                "check_swift.py",
                "engramFFI.h",
                "engramFFI.modulemap",
                "engramFFI.xcframework",
            ],
            sources: ["engram.swift"],
            linkerSettings: [
                // What the static library needs from the system: wgpu's Metal backend (Metal,
                // QuartzCore, CoreGraphics, Foundation, CoreFoundation, the Objective-C runtime)
                // and Rust's standard library (iconv; libSystem is always linked).
                .linkedFramework("Metal"),
                .linkedFramework("QuartzCore"),
                .linkedFramework("CoreGraphics"),
                .linkedFramework("Foundation"),
                .linkedFramework("CoreFoundation"),
                .linkedLibrary("objc"),
                .linkedLibrary("iconv"),
            ]
        ),
    ]
)
