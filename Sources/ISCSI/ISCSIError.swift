// ISCSI: the only importer of CISCSI. A libiscsi context is not thread-safe, so a
// session here is not Sendable: it is made, used and closed on one thread, inside
// `ISCSIClient.withSession`. It decides nothing about which targets exist.

/// A libiscsi call that failed, with libiscsi's own message.
public struct ISCSIError: Error, Sendable, CustomStringConvertible {
    public var operation: String
    public var message: String

    public var description: String { "\(operation): \(message)" }
}

/// Where a LUN lives: `127.0.0.1:3260`, a target IQN and a LUN number.
public struct ISCSITarget: Sendable, Equatable, CustomStringConvertible {
    public var portal: String
    public var iqn: String
    public var lun: Int

    public init(portal: String, iqn: String, lun: Int = 1) {
        self.portal = portal
        self.iqn = iqn
        self.lun = lun
    }

    public var description: String { "iscsi://\(portal)/\(iqn)/\(lun)" }
}

public struct CHAPCredentials: Sendable, Equatable {
    public var user: String
    public var password: String

    public init(user: String, password: String) {
        self.user = user
        self.password = password
    }
}

/// What INQUIRY says about a LUN.
public struct Inquiry: Sendable, Equatable {
    /// SCSI peripheral device type; 0 is a direct-access block device (a disk).
    public var deviceType: Int
    /// 0 means a device is connected at this LUN.
    public var qualifier: Int
    public var vendor: String
    public var product: String
    public var revision: String
}

/// What READ CAPACITY (16) says: block size and number of blocks.
public struct Capacity: Sendable, Equatable {
    public var blockSize: UInt32
    public var blocks: UInt64
    public var bytes: UInt64 { blocks * UInt64(blockSize) }
}
