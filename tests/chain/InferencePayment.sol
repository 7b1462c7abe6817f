// SPDX-License-Identifier: MIT
// A test double of Plumise's InferencePayment contract: the same functions, events, rules and numbers
// the gateway relies on (deposit, tiers at PRO_TIER_MINIMUM, useCredits by the gateway only, cost per
// 1000 tokens), written for the gateway's tests, without the OpenZeppelin imports.
pragma solidity ^0.8.20;

contract InferencePayment {
    struct UserCredit {
        uint256 balance;
        uint256 usedCredits;
        uint256 lastDeposit;
        uint256 tier; // 0 = free, 1 = pro
    }

    uint256 public constant PRO_TIER_MINIMUM = 100 ether;
    uint256 public costPer1000Tokens = 0.001 ether;
    address public owner;
    address public gateway;
    address public treasury;
    mapping(address => UserCredit) public userCredits;
    bool private locked;

    event Deposited(address indexed user, uint256 amount, uint256 newBalance);
    event CreditUsed(address indexed user, uint256 tokens, uint256 cost);
    event Withdrawn(address indexed user, uint256 amount);
    event TierChanged(address indexed user, uint256 oldTier, uint256 newTier);
    event GatewayUpdated(address indexed oldGateway, address indexed newGateway);
    event CostUpdated(uint256 oldCost, uint256 newCost);
    event TreasuryUpdated(address indexed oldTreasury, address indexed newTreasury);

    modifier onlyOwner() {
        require(msg.sender == owner, "Only owner");
        _;
    }

    modifier nonReentrant() {
        require(!locked, "Reentrant call");
        locked = true;
        _;
        locked = false;
    }

    constructor(address _gateway, address _treasury) {
        require(_gateway != address(0), "Invalid gateway");
        require(_treasury != address(0), "Invalid treasury");
        owner = msg.sender;
        gateway = _gateway;
        treasury = _treasury;
    }

    function deposit() external payable nonReentrant {
        require(msg.value > 0, "Zero deposit");
        UserCredit storage credit = userCredits[msg.sender];
        credit.balance += msg.value;
        credit.lastDeposit = block.timestamp;
        if (credit.balance >= PRO_TIER_MINIMUM && credit.tier == 0) {
            credit.tier = 1;
            emit TierChanged(msg.sender, 0, 1);
        }
        emit Deposited(msg.sender, msg.value, credit.balance);
    }

    function useCredits(address user, uint256 tokenCount) external nonReentrant {
        require(msg.sender == gateway, "Only gateway");
        require(tokenCount > 0, "Zero tokens");
        UserCredit storage credit = userCredits[user];
        uint256 cost = (tokenCount * costPer1000Tokens) / 1000;
        require(credit.balance >= cost, "Insufficient balance");
        credit.balance -= cost;
        credit.usedCredits += cost;
        bool downgraded = credit.tier == 1 && credit.balance < PRO_TIER_MINIMUM;
        if (downgraded) {
            credit.tier = 0;
        }
        (bool sent, ) = treasury.call{value: cost}("");
        require(sent, "Treasury transfer failed");
        if (downgraded) {
            emit TierChanged(user, 1, 0);
        }
        emit CreditUsed(user, tokenCount, cost);
    }

    function withdraw(uint256 amount) external nonReentrant {
        require(amount > 0, "Zero amount");
        UserCredit storage credit = userCredits[msg.sender];
        require(credit.balance >= amount, "Insufficient balance");
        credit.balance -= amount;
        if (credit.tier == 1 && credit.balance < PRO_TIER_MINIMUM) {
            credit.tier = 0;
            emit TierChanged(msg.sender, 1, 0);
        }
        (bool sent, ) = msg.sender.call{value: amount}("");
        require(sent, "Transfer failed");
        emit Withdrawn(msg.sender, amount);
    }

    function getUserTier(address user) external view returns (uint256) {
        return userCredits[user].tier;
    }

    function getUserBalance(address user) external view returns (uint256) {
        return userCredits[user].balance;
    }

    function isProTier(address user) external view returns (bool) {
        return userCredits[user].tier == 1;
    }

    function getUserCredit(address user) external view returns (UserCredit memory) {
        return userCredits[user];
    }

    function setGateway(address _gateway) external onlyOwner {
        require(_gateway != address(0), "Invalid gateway");
        emit GatewayUpdated(gateway, _gateway);
        gateway = _gateway;
    }

    function setCostPer1000Tokens(uint256 _cost) external onlyOwner {
        require(_cost >= 0.0001 ether, "Cost too low");
        emit CostUpdated(costPer1000Tokens, _cost);
        costPer1000Tokens = _cost;
    }

    function setTreasury(address _treasury) external onlyOwner {
        require(_treasury != address(0), "Invalid treasury");
        emit TreasuryUpdated(treasury, _treasury);
        treasury = _treasury;
    }
}
