/// A file uploaded to a room: an image, a voice message, any document. Its bytes live in an
/// `AttachmentStore`; a message carries the attachments it shares.
public struct Attachment: Sendable, Hashable {
    /// A ULID, like message ids.
    public var id: String
    public var room: String
    /// Who uploaded it: only they may attach it to a message.
    public var user: String
    /// The file name as given, cleaned (`AttachmentName.clean`).
    public var name: String
    /// The MIME type, decided from the leading bytes (`ContentSniffer`), never from the name.
    public var type: String
    public var size: Int64
    /// For images, read from the image's header.
    public var width: Int?
    public var height: Int?
    /// For audio and video, in milliseconds, as the uploader declared it (the recorder knows it).
    public var duration: Int?
    /// SHA-256 of the bytes, hex: the file's address in the store, and its ETag.
    public var digest: String
    public var created: Timestamp
    /// The message it is attached to, once it is, and that message's `clientId`.
    public var message: String?
    public var clientId: String?

    public init(
        id: String, room: String, user: String, name: String, type: String, size: Int64, width: Int? = nil, height: Int? = nil,
        duration: Int? = nil, digest: String, created: Timestamp, message: String? = nil, clientId: String? = nil
    ) {
        self.id = id
        self.room = room
        self.user = user
        self.name = name
        self.type = type
        self.size = size
        self.width = width
        self.height = height
        self.duration = duration
        self.digest = digest
        self.created = created
        self.message = message
        self.clientId = clientId
    }

    /// Served `inline` (an image, audio); anything else is served as a download.
    public var isInline: Bool { ContentSniffer.isInline(type) }
}

/// What is known of an upload before its bytes: where, by whom, and what the client says.
public struct UploadRequest: Sendable, Hashable {
    public var id: String
    public var room: String
    public var user: String
    public var name: String
    /// Declared by the client for audio and video (milliseconds), kept as metadata.
    public var duration: Int?
    public var maxBytes: Int64
    public var timestamp: Timestamp

    public init(id: String = MessageID.next(), room: String, user: String, name: String, duration: Int?, maxBytes: Int64, timestamp: Timestamp) {
        self.id = id
        self.room = room
        self.user = user
        self.name = AttachmentName.clean(name)
        self.duration = duration
        self.maxBytes = maxBytes
        self.timestamp = timestamp
    }
}

public enum AttachmentName {
    /// A file name safe to show and to put in a header: the last path component, without
    /// control characters, quotes or backslashes, at most 200 bytes; `file` when nothing is left.
    public static func clean(_ name: String) -> String {
        let last = name.split(whereSeparator: { $0 == "/" || $0 == "\\" }).last.map(String.init) ?? ""
        var cleaned = String(String.UnicodeScalarView(last.unicodeScalars.filter { scalar in
            !(scalar.properties.generalCategory == .control || scalar == "\"" || scalar == "\\" || scalar.properties.generalCategory == .format)
        })).trimmingWhitespace()
        while cleaned.utf8.count > 200 { cleaned.removeLast() }
        return cleaned.isEmpty || cleaned == "." || cleaned == ".." ? "file" : cleaned
    }
}

extension String {
    fileprivate func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
            let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
        else { return "" }
        return String(scalars[first...last])
    }
}

/// Decides a file's type from its leading bytes. A name or a declared type can lie (an HTML
/// page called `cat.png`); magic numbers of the formats a chat shows inline cannot, and
/// anything else is served as a download.
public enum ContentSniffer {
    /// How many leading bytes `sniff` and `dimensions` look at.
    public static let prefixLength = 64 * 1024

    /// Types served `inline`: images the browser decodes itself, and audio. Never SVG (it is a
    /// document that can run script) or HTML; video is served as an attachment, which a
    /// `<video>` element plays all the same.
    public static func isInline(_ type: String) -> Bool {
        ["image/png", "image/jpeg", "image/gif", "image/webp"].contains(type) || type.hasPrefix("audio/")
    }

    public static func sniff(_ bytes: [UInt8], declaredAudio: Bool = false) -> String {
        func starts(_ magic: [UInt8], at offset: Int = 0) -> Bool {
            bytes.count >= offset + magic.count && Array(bytes[offset..<(offset + magic.count)]) == magic
        }
        let ascii = { (text: String) in Array(text.utf8) }
        if starts([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return "image/png" }
        if starts([0xFF, 0xD8, 0xFF]) { return "image/jpeg" }
        if starts(ascii("GIF87a")) || starts(ascii("GIF89a")) { return "image/gif" }
        if starts(ascii("RIFF")), starts(ascii("WEBP"), at: 8) { return "image/webp" }
        if starts(ascii("RIFF")), starts(ascii("WAVE"), at: 8) { return "audio/wav" }
        if starts(ascii("%PDF-")) { return "application/pdf" }
        if starts(ascii("OggS")) { return "audio/ogg" }
        if starts(ascii("fLaC")) { return "audio/flac" }
        if starts(ascii("ID3")) || (bytes.count >= 2 && bytes[0] == 0xFF && bytes[1] & 0xE0 == 0xE0) { return "audio/mpeg" }
        if starts([0x1A, 0x45, 0xDF, 0xA3]) { return declaredAudio ? "audio/webm" : "video/webm" }
        if starts(ascii("ftyp"), at: 4) {
            let brand = bytes.count >= 12 ? String(decoding: bytes[8..<12], as: UTF8.self) : ""
            return brand.hasPrefix("M4A") || declaredAudio ? "audio/mp4" : "video/mp4"
        }
        if starts([0x50, 0x4B, 0x03, 0x04]) { return "application/zip" }
        if !bytes.isEmpty, !bytes.contains(0), isUTF8(bytes.prefix(4096), truncated: bytes.count > 4096) { return "text/plain" }
        return "application/octet-stream"
    }

    /// Valid UTF-8, allowing a character cut at the end when the text goes on.
    private static func isUTF8(_ bytes: ArraySlice<UInt8>, truncated: Bool) -> Bool {
        for cut in 0...(truncated ? 3 : 0) where String(validating: bytes.dropLast(cut), as: UTF8.self) != nil { return true }
        return false
    }

    /// An image's width and height from its header (PNG, GIF, JPEG, WebP); nil otherwise.
    public static func dimensions(_ bytes: [UInt8], type: String) -> (width: Int, height: Int)? {
        func be(_ at: Int, _ count: Int) -> Int? {
            guard bytes.count >= at + count else { return nil }
            return bytes[at..<(at + count)].reduce(0) { $0 << 8 | Int($1) }
        }
        func le(_ at: Int, _ count: Int) -> Int? {
            guard bytes.count >= at + count else { return nil }
            return bytes[at..<(at + count)].reversed().reduce(0) { $0 << 8 | Int($1) }
        }
        switch type {
        case "image/png":
            guard let width = be(16, 4), let height = be(20, 4) else { return nil }
            return (width, height)
        case "image/gif":
            guard let width = le(6, 2), let height = le(8, 2) else { return nil }
            return (width, height)
        case "image/jpeg":
            // Walk the segments to a start-of-frame marker (C0-CF, but not C4, C8 or CC).
            var at = 2
            while at + 9 < bytes.count {
                guard bytes[at] == 0xFF else { return nil }
                let marker = bytes[at + 1]
                if marker == 0xFF { at += 1; continue }
                guard let length = be(at + 2, 2), length >= 2 else { return nil }
                if (0xC0...0xCF).contains(marker), ![0xC4, 0xC8, 0xCC].contains(marker) {
                    guard let height = be(at + 5, 2), let width = be(at + 7, 2) else { return nil }
                    return (width, height)
                }
                at += 2 + length
            }
            return nil
        case "image/webp":
            let chunk = bytes.count >= 16 ? String(decoding: bytes[12..<16], as: UTF8.self) : ""
            switch chunk {
            case "VP8X":
                guard let width = le(24, 3), let height = le(27, 3) else { return nil }
                return (width + 1, height + 1)
            case "VP8 ":
                guard let width = le(26, 2), let height = le(28, 2) else { return nil }
                return (width & 0x3FFF, height & 0x3FFF)
            case "VP8L":
                guard let bits = le(21, 4) else { return nil }
                return ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
            default:
                return nil
            }
        default:
            return nil
        }
    }
}

extension Attachment {
    /// How a message row keeps its attachments in one text column: a line per attachment, its
    /// fields separated by tabs (a cleaned name has neither tabs nor newlines); nil for none.
    public static func stored(_ attachments: [Attachment]) -> String? {
        guard !attachments.isEmpty else { return nil }
        return attachments.map { a in
            [a.id, a.name, a.type, String(a.size), a.width.map(String.init) ?? "", a.height.map(String.init) ?? "",
             a.duration.map(String.init) ?? "", a.digest].joined(separator: "\t")
        }.joined(separator: "\n")
    }

    /// The attachments of `message`, from its stored column.
    public static func parse(_ stored: String?, of message: Message) -> [Attachment] {
        guard let stored, !stored.isEmpty else { return [] }
        return stored.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard fields.count == 8, let size = Int64(fields[3]) else { return nil }
            return Attachment(
                id: fields[0], room: message.room, user: message.user, name: fields[1], type: fields[2], size: size,
                width: Int(fields[4]), height: Int(fields[5]), duration: Int(fields[6]), digest: fields[7],
                created: message.timestamp, message: message.id
            )
        }
    }
}
